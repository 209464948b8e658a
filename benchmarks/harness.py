"""Shared pieces of the benchmark scripts: machine header, interleaved timing, inputs.

`interleave` times several runners round by round (A, B, C, A, B, C, ...) so that a
machine whose load changes during the run (other jobs, thermal limits) slows every
runner alike, which keeps their ratios meaningful even when absolute figures are not.
"""

import os
import platform
import statistics
import time

NUM_CLASSES = 751  # Market-1501 training identities
IMAGE_SIZE = (256, 128)


def machine_lines() -> list[str]:
  """Header lines: CPU, cores, load, versions, backend, XLA_FLAGS."""
  import flax
  import jax
  import jaxlib

  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
  except (OSError, StopIteration):
    pass
  try:
    import torch

    torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
  except ImportError:
    torch_version = "not installed"
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return [
    f"CPU: {cpu} | cores: {os.cpu_count()} | load average (1/5/15 min) at start: {load}",
    f"JAX {jax.__version__} | jaxlib {jaxlib.__version__} | flax {flax.__version__} | "
    f"torch {torch_version} | backend {jax.default_backend()} x {jax.device_count()}",
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
  ]


class Runner:
  """A named callable timed by `interleave`; `call()` must block until done.

  `warm_up=False` skips the warm-up call (for a runner with nothing to compile whose
  call takes minutes, e.g. a NumPy peer at full scale).
  """

  def __init__(
    self, group: str, name: str, call, items: int, flops: float | None, warm_up: bool = True
  ):
    self.group, self.name, self.call, self.items, self.flops = group, name, call, items, flops
    self.warm_up = warm_up
    self.compile_s: float | None = None
    self.times: list[float] = []

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def rate(self) -> float:
    return self.items / self.median


def interleave(runners: list[Runner], rounds: int) -> None:
  """One warm-up call each (unless `warm_up` is off), then `rounds` rounds calling every
  runner once in turn."""
  for runner in runners:
    if runner.warm_up:
      runner.call()
  for _ in range(rounds):
    for runner in runners:
      start = time.perf_counter()
      runner.call()
      runner.times.append(time.perf_counter() - start)


def best_time(fn, rounds: int) -> float:
  """Best wall time in seconds of `rounds` calls of `fn()`, after one warm-up call."""
  fn()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def pk_batch(batch_size: int, seed: int = 0, image_size: tuple[int, int] = IMAGE_SIZE):
  """uint8 images [B, H, W, 3] ((H, W) = image_size, default 256x128) and P x K labels
  (K = 4) over NUM_CLASSES ids."""
  import numpy as np

  if batch_size % 4:
    raise ValueError(f"--train_batch={batch_size}: must be a multiple of K = 4 (P x K)")
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size, *image_size, 3), dtype=np.uint8)
  ids = rng.choice(NUM_CLASSES, batch_size // 4, replace=False)
  return images, np.repeat(ids, 4).astype(np.int32)


# The published configs the benchmarks time (`configs/<name>.py`); "fsaf" = fsaf_market.
CONFIGS = ("baseline", "baseline_sam", "fsaf_market", "bot_r50_ibn_a", "fastreid_bot_r50_ibn")
_ALIASES = {"fsaf": "fsaf_market"}


def load_config(name: str, dtype: str, last_stride: int | None = None):
  """`configs/<name>.py`'s config with the compute dtype (and last stride, if given) set."""
  import importlib

  module = importlib.import_module(f"configs.{_ALIASES.get(name, name)}")
  config = module.get_config()
  config.model.dtype = dtype
  if last_stride is not None:
    config.model.last_stride = last_stride
  return config
