r"""Trains a ReID model, resuming from the work directory, and evaluates it.

  python train.py --config=configs/fsaf.py:market,fsaf --workdir=workdirs/market \
      [--config.train.num_epochs=60 ...]

Runs `fsaf_jax.training.train_loop.train_and_evaluate` (a config with a `demo` section,
configs/demo.py, runs through `fsaf_jax.demo.run.run_demo`: synthetic data, training,
then the comparison with the untrained network and the colour-histogram baseline):
resumes if WORKDIR holds a checkpoint, saves on SIGTERM / Ctrl-C / SIGHUP (then exits with
128 + the signal number; run the same command to continue), evaluates every
`eval_every_epochs` and at the end.
Multi-host: set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (or
FSAF_DISTRIBUTED=auto) and run the same command on every host.

A user mistake (an incompatible checkpoint, a work dir another run holds, every
checkpoint damaged, a bad setting) prints one `ERROR:` line (and a `hint:` line) and
exits with 2; a NaN stop, a failed checkpoint save or a failed write of the results (disk
full, also while building the dataset) prints one `ERROR:` line and exits with 1.
"""

import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import errors, logs, paths
from data_pipelines.datasets.source import DatasetWriteError
from fsaf_jax import imagenet_weights
from fsaf_jax.core import host_allocator
from fsaf_jax.core.config_json import config_name
from fsaf_jax.core.distributed import maybe_initialize_distributed
from fsaf_jax.demo import run as demo_run
from fsaf_jax.evaluation.result_dirs import ResultsWriteError
from fsaf_jax.training import train_loop
from fsaf_jax.training.save_monitor import CheckpointSaveError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = paths.DEFINE_path("workdir", None, "Work directory (checkpoints, logs, eval).")
_HOST_ALLOCATOR = host_allocator.define_flag()


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  config_name: str | None = None,
  on_step: train_loop.OnStep | None = None,
) -> train_loop.TrainResult:
  """Trains `config` in `workdir`: the demo's run for a demo config, else the loop's."""
  if demo_run.is_demo_config(config):
    return demo_run.run_demo(config, workdir, config_name=config_name, on_step=on_step).train
  return train_loop.train_and_evaluate(config, workdir, config_name=config_name, on_step=on_step)


def main(argv: Sequence[str], *, on_step: train_loop.OnStep | None = None) -> None:
  """The program; `on_step` is passed to the training loop (tests install one)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  errors.check_address_space("train.py")  # JAX would abort below it
  host_allocator.configure_for(_CONFIG.value, _HOST_ALLOCATOR.value)  # CPU: XLA's buffers mapped
  maybe_initialize_distributed()  # multi-host: join the other processes (module doc)
  name = config_name(config_flags.get_config_filename(flags.FLAGS["config"]))
  config = imagenet_weights.resolve_config(_CONFIG.value)  # 'imagenet': the cached release
  try:
    result = run(config, _WORKDIR.value, config_name=name, on_step=on_step)
  except (FloatingPointError, CheckpointSaveError, ResultsWriteError, DatasetWriteError) as e:
    sys.exit(f"ERROR: {errors.one_line(str(e))}")
  if result.signal is not None:
    logging.info("Exiting after signal %d at step %d", result.signal, result.step)
    sys.exit(128 + result.signal)


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run(main)
