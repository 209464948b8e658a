"""The CPU demo's run: synthetic data, training, and the comparison with the baselines.

`run_demo(config, workdir)` is what `python train.py --config=configs/demo.py` runs:

1. `train_loop.train_and_evaluate` on the config without its `demo` section (the
   training loop knows nothing of the demo), its `prepare_data` hook writing the
   synthetic dataset of `config.demo.synthetic` first (`synthetic_data`).
2. With `config.demo.compare_baselines`, once training has reached its end: the
   untrained network (re-created as training started, `untrained`) and the
   colour-histogram baseline scored on the same query / gallery, the table printed and
   `WORKDIR/eval/step_<N>/baselines.json` written (`baselines`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from fsaf_jax.demo import baselines, synthetic_data, untrained
from fsaf_jax.training import train_loop

DEMO_SECTION = "demo"


@dataclasses.dataclass
class DemoResult:
  """What `run_demo` did.

  Attributes:
    train: the training run's `TrainResult`.
    baselines: the comparison of `baselines.compare_baselines`, or None (switched off,
      or the run stopped before its end).
  """

  train: train_loop.TrainResult
  baselines: dict[str, Any] | None = None


def is_demo_config(config: ml_collections.ConfigDict) -> bool:
  """True if `config` is a demo config (it has a `demo` section, configs/demo.py)."""
  return DEMO_SECTION in config


def training_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` without its `demo` section: the config the training run sees."""
  return ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != DEMO_SECTION})


def run_demo(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  config_name: str | None = None,
  on_step: train_loop.OnStep | None = None,
) -> DemoResult:
  """Writes the synthetic data, trains and evaluates, then compares with the baselines.

  Args:
    config: a demo config (configs/demo.py: the training fields and `demo`).
    workdir: the work directory (as `train_loop.train_and_evaluate`'s).
    config_name: the config's name, recorded with the metrics.
    on_step: passed to `train_loop.train_and_evaluate`.

  Returns:
    A `DemoResult`.

  Raises:
    What `train_loop.train_and_evaluate` and `synthetic_data.ensure_synthetic` raise.
  """
  wanted = synthetic_data.synthetic_config(config[DEMO_SECTION].synthetic)
  result = train_loop.train_and_evaluate(
    training_config(config),
    workdir,
    config_name=config_name,
    prepare_data=functools.partial(synthetic_data.prepare_synthetic, wanted=wanted),
    on_step=on_step,
  )
  demo = DemoResult(train=result)
  if result.signal is None and config[DEMO_SECTION].compare_baselines:
    outdir = epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))
    evaluator = result.evaluators[0]
    demo.baselines = baselines.compare_baselines(
      evaluator,
      result.results[0],
      untrained.untrained_variables(result.config, evaluator.mesh),
      outdir=outdir if jax.process_index() == 0 else None,
    )
  return demo
