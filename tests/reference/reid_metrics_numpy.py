"""Straightforward per-query NumPy reference of the Market-1501 metrics.

It is torchreid's / fast-reid's `eval_market1501` loop (argsort the distance matrix,
drop same-pid-same-camera items, cumsum the matches) with the conventions the fsaf-jax
evaluator states explicitly:

- ties are broken by gallery index: `np.argsort(kind='stable')`;
- junk gallery items (pid < 0) are dropped from every ranked list (torchreid drops
  them when loading the dataset);
- mINP as fast-reid: `#positives / (position of the last positive)`;
- a CMC shorter than `max_rank` cannot happen: max_rank is cut at the gallery size.

Used by the parity tests and by `benchmarks/evaluation.py` (as the baseline timing).
"""

from __future__ import annotations

import numpy as np


def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
  """Returns (cmc float64 [max_rank], mAP, mINP, num_valid, num_skipped)."""
  distmat = np.asarray(distmat, np.float32)
  q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
  q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
  num_q, num_g = distmat.shape
  max_rank = min(max_rank, num_g)
  indices = np.argsort(distmat, axis=1, kind="stable")
  all_cmc, all_ap, all_inp = [], [], []
  num_skipped = 0
  for q_idx in range(num_q):
    order = indices[q_idx]
    remove = ((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])) | (
      g_pids[order] < 0
    )
    raw_cmc = (g_pids[order] == q_pids[q_idx])[~remove].astype(np.int64)
    if q_pids[q_idx] < 0 or not np.any(raw_cmc):
      num_skipped += 1
      continue
    cmc = raw_cmc.cumsum()
    last = np.max(np.where(raw_cmc == 1)[0])
    all_inp.append(cmc[last] / (last + 1.0))
    cmc[cmc > 1] = 1
    if cmc.shape[0] < max_rank:  # short filtered list: it already holds its positive
      cmc = np.concatenate([cmc, np.ones(max_rank - cmc.shape[0], cmc.dtype)])
    all_cmc.append(cmc[:max_rank])
    num_rel = raw_cmc.sum()
    precision_at = raw_cmc.cumsum() / (np.arange(raw_cmc.shape[0]) + 1.0)
    all_ap.append((precision_at * raw_cmc).sum() / num_rel)
  if not all_ap:
    raise ValueError("no query has a positive")
  cmc = np.asarray(all_cmc, np.float64).sum(axis=0) / len(all_ap)
  return cmc, float(np.mean(all_ap)), float(np.mean(all_inp)), len(all_ap), num_skipped
