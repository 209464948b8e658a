"""One process of the multi-process test (test_distributed.py), not a test itself.

Run as `python distributed_worker.py OUT_DIR DEVICES_PER_PROCESS CACHE_DIR` with
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` set: joins the others
through `maybe_initialize_distributed`, trains the tiny model for two steps on its
process-local part of the shared global batches, and saves the final params,
batch_stats and metrics (replicated, so every process can read them) to
OUT_DIR/p<process index>.npz.
"""

import pathlib
import sys


def main(out_dir: str, devices_per_process: int, cache_dir: str) -> None:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # repo root
  from tests.reference import worker_start  # noqa: PLC0415

  worker_start.join(devices_per_process, cache_dir)
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from fsaf_jax.core.mesh import make_mesh  # noqa: PLC0415
  from fsaf_jax.training.train_step import make_train_step  # noqa: PLC0415
  from tests.reference import tiny_train_run as ref  # noqa: PLC0415
  from tests.reference.multiprocess import (  # noqa: PLC0415
    barrier,
    global_batch,
    process_batch_slice,
  )

  mesh = make_mesh()
  state = ref.initial_state(mesh)
  step = make_train_step(ref.model(), ref.config().loss, mesh)
  rows = process_batch_slice(ref.BATCH, mesh)
  batches = [global_batch({k: v[rows] for k, v in b.items()}, mesh) for b in ref.make_batches()]
  # Compile, then wait for the others: gloo gives the first collective only 30 s to
  # find every process, less than a compilation on a busy machine.
  step.jitted.lower(state, batches[0]).compile()
  barrier("fsaf_test_compiled")
  metrics = []
  for batch in batches:
    state, m = step(state, batch)
    metrics.append({k: float(v) for k, v in m.items()})
  host = ref.to_host({"params": state.params, "batch_stats": state.batch_stats})
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in path): v
    for path, v in jax.tree_util.tree_flatten_with_path(host)[0]
  }
  for i, m in enumerate(metrics):
    flat.update({f"metrics/{i}/{k}": np.float64(v) for k, v in m.items()})
  flat["rows"] = np.array([rows.start, rows.stop])
  flat["step"] = np.asarray(state.step)
  np.savez(pathlib.Path(out_dir) / f"p{jax.process_index()}.npz", **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
