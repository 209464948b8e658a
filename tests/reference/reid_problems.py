"""Random ReID evaluation problems with realistic structure, for the evaluation tests.

Hundreds of identities over 6 cameras, gallery distractors (pid 0) and junk (pid -1),
query identities missing from the gallery (queries without positives), and features
quantised to a coarse grid so that exact distance ties occur.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Problem:
  q_feats: np.ndarray  # float32 [M, D]
  g_feats: np.ndarray  # float32 [N, D]
  q_pids: np.ndarray
  g_pids: np.ndarray
  q_camids: np.ndarray
  g_camids: np.ndarray

  @property
  def ids(self):
    return self.q_pids, self.g_pids, self.q_camids, self.g_camids


def make_problem(
  seed: int,
  num_query: int = 400,
  num_gallery: int = 2000,
  num_ids: int = 300,
  num_cams: int = 6,
  dim: int = 8,
  noise: float = 0.9,
  grid: float = 0.5,
) -> Problem:
  """A problem with ~12% distractors, ~3% junk and ~10% queries of unseen identities.

  Features are `centre[pid] + noise` rounded to multiples of `grid` (exact in float32),
  so identical features, hence exactly tied distances, are common.
  """
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_ids + 40, dim)) * 1.5
  g_pids = rng.integers(1, num_ids + 1, num_gallery)
  kind = rng.random(num_gallery)
  g_pids[kind < 0.12] = 0
  g_pids[(kind >= 0.12) & (kind < 0.15)] = -1
  q_pids = rng.integers(1, num_ids + 1, num_query)
  q_pids[rng.random(num_query) < 0.1] = rng.integers(num_ids + 1, num_ids + 40, 1)[0]

  def feats(pids):
    f = centres[np.maximum(pids, 0)] + noise * rng.standard_normal((pids.shape[0], dim))
    f[pids <= 0] = rng.standard_normal(((pids <= 0).sum(), dim)) * 2.0
    return (np.round(f / grid) * grid).astype(np.float32)

  return Problem(
    feats(q_pids),
    feats(g_pids),
    q_pids,
    g_pids,
    rng.integers(0, num_cams, num_query),
    rng.integers(0, num_cams, num_gallery),
  )


def count_exact_ties(distmat: np.ndarray) -> int:
  """Number of (row, value) groups with more than one equal distance."""
  s = np.sort(distmat, axis=1)
  return int((s[:, 1:] == s[:, :-1]).sum())
