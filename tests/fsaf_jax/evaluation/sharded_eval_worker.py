"""One process of the multi-process sharded-evaluation test (test_metrics.py), not a test.

Run as `python sharded_eval_worker.py OUT_DIR DEVICES_PER_PROCESS CACHE_DIR` with the
`JAX_*` environment of `tests.reference.multiprocess.launch_processes`: joins the other
processes, scores the `reid_problems.make_problem(4, num_gallery=2001)` features with
the gallery sharded over every process's devices (`evaluate_features_sharded`), for
both metrics, and saves each result's CMC, mAP and mINP, and which gallery rows this
process's devices held, to OUT_DIR/p<process index>.npz.
"""

import pathlib
import sys


def main(out_dir: str, devices_per_process: int, cache_dir: str) -> None:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # repo root
  from tests.reference import worker_start  # noqa: PLC0415

  worker_start.join(devices_per_process, cache_dir)
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import Mesh  # noqa: PLC0415

  from fsaf_jax.evaluation import metrics  # noqa: PLC0415
  from tests.reference import reid_problems  # noqa: PLC0415

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  p = reid_problems.make_problem(4, num_gallery=2001)
  out = {}
  for metric in ("cosine", "euclidean"):
    result = metrics.evaluate_features_sharded(
      p.q_feats, p.g_feats, *p.ids, mesh, metric=metric, query_chunk=37
    )
    out[f"{metric}/cmc"] = result.cmc
    out[f"{metric}/map_minp"] = np.asarray([result.mAP, result.mINP])
  np.savez(pathlib.Path(out_dir) / f"p{jax.process_index()}.npz", **out)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
