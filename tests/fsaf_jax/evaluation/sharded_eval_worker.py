"""One process of the multi-process sharded-evaluation test (test_metrics.py), not a test.

Run as `python sharded_eval_worker.py OUT_DIR DEVICES_PER_PROCESS CACHE_DIR` with the
`JAX_*` environment of `tests.reference.multiprocess.launch_processes`: joins the other
processes, scores the `reid_problems.make_problem(4, num_gallery=2001)` features with
the gallery sharded over every process's devices (`evaluate_features_sharded`), for
both metrics, and saves each result's CMC, mAP and mINP, and which gallery rows this
process's devices held, to OUT_DIR/p<process index>.npz.
"""

import os
import pathlib
import sys


def main(out_dir: str, devices_per_process: int, cache_dir: str) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # repo root

  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import Mesh  # noqa: PLC0415

  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  from fsaf_jax.core.distributed import maybe_initialize_distributed  # noqa: PLC0415
  from fsaf_jax.evaluation import metrics  # noqa: PLC0415
  from tests.reference import reid_problems  # noqa: PLC0415

  assert maybe_initialize_distributed(), "expected the JAX_* environment to ask for it"
  assert jax.device_count() == jax.process_count() * devices_per_process
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
