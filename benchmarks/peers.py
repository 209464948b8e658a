"""The implementations `benchmarks/evaluation.py` compares against, loaded if installed.

fast-reid (PyPI `fastreid==1.4.0`, installed `--no-deps` by `benchmarks/setup_peers.py`)
provides the two functions users of fast-reid evaluate with:

- `evaluate_rank`'s Cython path, `fastreid/evaluation/rank_cylib/rank_cy.evaluate_cy`
  (a NumPy argsort of the distance matrix, then a typed per-query loop);
- `fastreid/evaluation/rerank.re_ranking`, the per-row NumPy k-reciprocal re-ranking,
  which squares the distances it is given.

They are loaded from their files, not through `import fastreid.evaluation`, whose
`__init__` imports fast-reid's trainer stack (torch, sklearn, ...), which the
`--no-deps` install does not bring and the two functions do not use.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import pathlib
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class FastReid:
  """What of fast-reid could be loaded.

  Attributes:
    version: the installed distribution's version, or None if not installed.
    evaluate_rank_cython: `evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids,
      max_rank) -> (cmc, AP per query, INP per query)`, or None if not built.
    re_ranking: `re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`, or None.
    problem: why something is missing ('' if nothing is).
  """

  version: str | None
  evaluate_rank_cython: Callable | None
  re_ranking: Callable | None
  problem: str

  def describe(self) -> str:
    if self.version is None:
      return f"not available ({self.problem})"
    parts = [
      f"fastreid {self.version}",
      "Cython evaluate_rank built" if self.evaluate_rank_cython else "Cython evaluate_rank MISSING",
      "re_ranking loaded" if self.re_ranking else "re_ranking MISSING",
    ]
    return ", ".join(parts) + (f" ({self.problem})" if self.problem else "")


def fastreid_folder() -> pathlib.Path | None:
  """The installed `fastreid` package folder (without importing it), or None."""
  spec = importlib.util.find_spec("fastreid")
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _load(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_fastreid() -> FastReid:
  """Loads fast-reid's Cython `evaluate_cy` and NumPy `re_ranking` if installed."""
  folder = fastreid_folder()
  if folder is None:
    return FastReid(None, None, None, "fastreid not installed: python benchmarks/setup_peers.py")
  try:
    from importlib import metadata

    version = metadata.version("fastreid")
  except Exception:  # noqa: BLE001 -- a folder without metadata still runs
    version = "unknown version"
  problems = []
  evaluate_cy = None
  cylib = folder / "evaluation" / "rank_cylib"
  built = [p for s in importlib.machinery.EXTENSION_SUFFIXES for p in cylib.glob(f"rank_cy{s}")]
  if built:
    try:
      evaluate_cy = _load("rank_cy", built[0]).evaluate_cy
    except ImportError as e:
      problems.append(f"rank_cy does not load: {e}")
  else:
    problems.append(f"rank_cy not built in {cylib}: python benchmarks/setup_peers.py")
  re_ranking = None
  try:
    re_ranking = _load("fastreid_rerank", folder / "evaluation" / "rerank.py").re_ranking
  except (ImportError, OSError) as e:
    problems.append(f"rerank.py does not load: {e}")
  return FastReid(version, evaluate_cy, re_ranking, "; ".join(problems))
