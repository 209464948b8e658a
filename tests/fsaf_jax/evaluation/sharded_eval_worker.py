"""One process of the multi-process sharded-evaluation tests (test_metrics.py,
test_rerank_sharded.py), not a test.

Run as `python sharded_eval_worker.py OUT_DIR DEVICES_PER_PROCESS CACHE_DIR WHAT` with
the `JAX_*` environment of `tests.reference.multiprocess.launch_processes`: joins the
other processes and, over a mesh of every process's devices, for both metrics
- WHAT=metrics: scores the `reid_problems.make_problem(4, num_gallery=2001)` features
  with the gallery sharded (`evaluate_features_sharded`) and saves each result's CMC,
  mAP and mINP;
- WHAT=rerank: re-ranks the `RERANK_PROBLEM` features with the images sharded
  (`re_ranking_features_sharded`) and saves the [Q, G] result;
to OUT_DIR/p<process index>.npz.
"""

import pathlib
import sys

RERANK_PROBLEM = dict(seed=5, num_query=61, num_gallery=303)


def main(out_dir: str, devices_per_process: int, cache_dir: str, what: str) -> None:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # repo root
  from tests.reference import worker_start  # noqa: PLC0415

  worker_start.join(devices_per_process, cache_dir)
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import Mesh  # noqa: PLC0415

  from fsaf_jax.evaluation import metrics, rerank_sharded  # noqa: PLC0415
  from tests.reference import reid_problems  # noqa: PLC0415

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  out = {}
  if what == "metrics":
    p = reid_problems.make_problem(4, num_gallery=2001)
    for metric in ("cosine", "euclidean"):
      result = metrics.evaluate_features_sharded(
        p.q_feats, p.g_feats, *p.ids, mesh, metric=metric, query_chunk=37
      )
      out[f"{metric}/cmc"] = result.cmc
      out[f"{metric}/map_minp"] = np.asarray([result.mAP, result.mINP])
  else:
    p = reid_problems.make_problem(**RERANK_PROBLEM)
    for metric in ("cosine", "euclidean"):
      out[metric] = rerank_sharded.re_ranking_features_sharded(
        p.q_feats, p.g_feats, mesh, metric=metric, row_chunk=64, query_rows=16
      )
  np.savez(pathlib.Path(out_dir) / f"p{jax.process_index()}.npz", **out)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
