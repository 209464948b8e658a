r"""Evaluates a trained checkpoint on the query / gallery splits of its dataset.

  python eval.py --config=configs/fsaf.py:market,fsaf --workdir=workdirs/market \
      [--checkpoint=workdirs/market/checkpoints/STEP] [--config.eval.rerank=True]

Restores the latest checkpoint of WORKDIR (or --checkpoint=PATH), refuses one whose
network or input size differ from --config, embeds the query and gallery images,
prints Rank-1/5/10, mAP and mINP (also after k-reciprocal re-ranking with
`--config.eval.rerank=True`), and writes WORKDIR/eval/step_<N>/metrics.json, the
ranked-list figure ranked_list.png and the diagnostic pictures (distances.png, roc.png,
activation_maps.png) for the checkpoint's step N (`--outdir` to put eval/ elsewhere).
`--config.eval.datasets='("market1501", "dukemtmc_reid@/data/DukeMTMC-reID")'`
evaluates several sets, each into WORKDIR/eval/step_<N>/<set>/, a set named with its
folder built there on first use (docs/evaluation.md); WORKDIR/eval/latest names the
newest step's folder, and evaluating an older step never overwrites a newer one's
results. Checkpoints are verified (checksums, finite values): with --workdir a damaged
newest one is skipped with a warning line naming it; --checkpoint=<a damaged step>
fails naming it. `--checkpoint` of another work dir than --workdir is refused (its
results would replace that work dir's) unless --outdir is given. The data read is the
checkpoint's (the data_dir its run recorded, found in a moved work dir too) unless
`--config.input.data_dir=DIR` is given on the command line (the config file's data
paths are not used); a `--config.input.manual_dir` given must hold the copy the build
was made from. The dataset (the default set) must be built (train.py builds it; or
`python -m data_pipelines.datasets.build`).
Runs `fsaf_jax.evaluation.evaluator.evaluate_checkpoint`.
"""

import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from data_pipelines import errors, logs, paths
from fsaf_jax.core import host_allocator
from fsaf_jax.core.config_json import config_name
from fsaf_jax.core.distributed import maybe_initialize_distributed
from fsaf_jax.evaluation import eval_data, evaluator
from fsaf_jax.evaluation.result_dirs import ResultsWriteError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = paths.DEFINE_path(
  "workdir", None, "Training work dir: evaluates its latest checkpoint, writes WORKDIR/eval/."
)
_CHECKPOINT = paths.DEFINE_path(
  "checkpoint", None, "Checkpoint to evaluate instead: WORKDIR/checkpoints/<step>."
)
_HOST_ALLOCATOR = host_allocator.define_flag()
_OUTDIR = paths.DEFINE_path(
  "outdir", None, "Where eval/ is written; default --workdir, else the checkpoint's work dir."
)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (_WORKDIR.value or _CHECKPOINT.value):
    raise app.UsageError("pass --workdir=DIR (its latest checkpoint) or --checkpoint=PATH")
  if _OUTDIR.value:
    errors.check_output_dir(_OUTDIR.value, "--outdir")
  errors.check_address_space("eval.py")  # JAX would abort below it
  host_allocator.configure_for(_CONFIG.value, _HOST_ALLOCATOR.value)  # CPU: XLA's buffers mapped
  maybe_initialize_distributed()
  # The data paths of the config file are the training's: only those named on the
  # command line are read, else the checkpoint's (`eval_data`).
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  config = eval_data.named_data_paths(_CONFIG.value, overrides)
  try:
    evaluator.evaluate_checkpoint(
      config,
      workdir=_WORKDIR.value,
      checkpoint=_CHECKPOINT.value,
      outdir=_OUTDIR.value,
      config_name=config_name(config_flags.get_config_filename(flags.FLAGS["config"])),
    )
  except ResultsWriteError as e:  # disk full, ...: one line, exit 1
    sys.exit(f"ERROR: {errors.one_line(str(e))}")
  except FileNotFoundError as e:
    raise errors.UserError(str(e)) from None


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  flags.mark_flags_as_required(["config"])
  errors.run(main)
