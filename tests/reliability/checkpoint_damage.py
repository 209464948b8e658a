"""What the reliability tests do to checkpoints on purpose, and a small state to save.

Each damage is what a user meets: a flipped byte (bad disk / copy), a truncated file
(copy interrupted, disk full), a deleted folder, garbled metadata.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import tiny
from fsaf_jax.core.mesh import make_mesh, replicated
from fsaf_jax.training.train_state import TrainState


class FakeIterator:
  """The iterator interface the checkpoints use."""

  def __init__(self, position: int):
    self.position = position

  def get_state(self) -> bytes:
    return json.dumps({"next_batch": self.position}).encode()

  def set_state(self, state: bytes) -> None:
    self.position = json.loads(state)["next_batch"]

  def start_prefetch(self) -> None:
    pass


def resolved_config():
  c = tiny.get_config()
  c.model.num_classes = 5
  c.train.steps_per_epoch = 3
  return c


def small_state(seed: int, step: int, nan: bool = False) -> TrainState:
  """Two small layers with Adam state (values from `seed`), replicated on all devices;
  `nan`: one NaN in the kernel."""
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(64, 64)).astype(np.float32)
  if nan:
    kernel[3, 5] = np.nan
  params = {"dense": {"kernel": kernel, "bias": rng.normal(size=64).astype(np.float32)}}
  tx = optax.adam(1e-3)
  state = TrainState(
    step=jnp.asarray(step, jnp.int32),
    params=params,
    batch_stats={"bn": {"mean": rng.normal(size=64).astype(np.float32)}},
    loss_params={},
    opt_state=tx.init(params),
    tx=tx,
    lr_schedule=lambda s: 1e-3,
  )
  return jax.device_put(state, replicated(make_mesh()))


def largest_file(folder: pathlib.Path) -> pathlib.Path:
  """The biggest file under `folder` (the array data of a checkpoint item)."""
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_byte(path: pathlib.Path, offset: int | None = None) -> None:
  data = bytearray(path.read_bytes())
  i = len(data) // 2 if offset is None else offset
  data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def truncate(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def delete(path: pathlib.Path) -> None:
  shutil.rmtree(path) if path.is_dir() else path.unlink()


def garble(path: pathlib.Path) -> None:
  path.write_text("{not json")


def tree_dir_snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  """{relative path: content} of every file under `folder`."""
  return {
    str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
  }
