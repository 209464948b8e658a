"""A tiny end-to-end training run on a tiny synthetic dataset: the training-loop tests.

`config(data_root)` is `configs/tiny.py` on a 20-identity synthetic Market-1501 tree
(10 train identities x 4 images, 64x32 JPEGs: `SYNTHETIC`) written and built with the
real generator and builder into `data_root` (`prepare_data`): P x K = 4 x 2 (8 images,
divisible by the 4 simulated devices), 2 steps per epoch, 3 epochs, a checkpoint every
2 steps. `write_config_file` writes the same as a config file for `train.py`; the
batch sequence is audited with `batch_index_log`.
"""

from __future__ import annotations

import pathlib
import textwrap

import ml_collections

from configs import tiny
from data_pipelines import synthetic
from data_pipelines.pk_sampler import PKSampler
from fsaf_jax.training import data_setup

NUM_TRAIN_IDS = 10
P, K = 4, 2
# Every identity once per epoch: 2 steps per epoch keep these loop tests short (the
# default 'bot' sampler would give 10 * 4 // K // P = 5; its own tests are in
# tests/data_pipelines/test_pk_sampler.py, and the demo trains with it).
SAMPLER = "uniform"
STEPS_PER_EPOCH = NUM_TRAIN_IDS // P
NUM_EPOCHS = 3
SYNTHETIC = synthetic.SyntheticConfig(
  num_ids=2 * NUM_TRAIN_IDS,
  num_train_ids=NUM_TRAIN_IDS,
  train_images_per_id=4,
  query_per_id=2,
  gallery_per_id=3,
  num_distractors=2,
  num_junk=1,
  image_size=(64, 32),
)


def config(data_root: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The tiny run's config, its data in `data_root/{synthetic,tfds}`."""
  data_root = pathlib.Path(data_root)
  c = tiny.get_config()
  c.input.dataset = "market1501"
  c.input.data_dir = str(data_root / "tfds")
  c.input.manual_dir = str(data_root / "synthetic")
  c.input.num_identities = P
  c.input.num_instances = K
  c.input.sampler = SAMPLER
  c.input.num_workers = 0
  c.input.eval_batch_size = 16
  c.optim.warmup_epochs = 1
  c.optim.milestones = (2,)
  c.train.num_epochs = NUM_EPOCHS
  c.train.log_every_steps = 2
  c.train.checkpoint_every_steps = 2
  c.train.keep_checkpoints = 10
  c.train.eval_every_epochs = 0
  c.eval.num_figure_queries = 2
  return c


def prepare_data(data_root: str | pathlib.Path) -> None:
  """Writes `SYNTHETIC` into `data_root/synthetic` and builds it into `data_root/tfds`."""
  data_root = pathlib.Path(data_root)
  c = config(data_root)
  synthetic.generate(c.input.manual_dir, SYNTHETIC)
  data_setup.prepare_dataset(c, data_root / "unused_workdir")


def write_config_file(path: str | pathlib.Path, data_root: str | pathlib.Path) -> pathlib.Path:
  """A config file for `train.py --config=PATH` returning `config(data_root)`."""
  path = pathlib.Path(path)
  path.write_text(
    textwrap.dedent(f"""\
      from tests.reference import tiny_synthetic_run


      def get_config():
        return tiny_synthetic_run.config({str(data_root)!r})
      """)
  )
  return path


def expected_batches(person_ids, num_steps: int, seed: int = 0) -> list[list[int]]:
  """Source record indices of global batches 0..num_steps-1 (single process).

  Straight from a fresh `PKSampler` over the train split's labels, position by
  position: the sequence a run must consume, each batch once, in order.
  """
  sampler = PKSampler(person_ids, num_identities=P, num_instances=K, seed=seed, mode=SAMPLER)
  b = P * K
  return [[sampler.record_at(s * b + i) for i in range(b)] for s in range(num_steps)]
