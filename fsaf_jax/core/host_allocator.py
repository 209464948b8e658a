"""glibc malloc settings that keep XLA's CPU buffers mapped from one step to the next.

On the CPU backend every jitted call allocates its output and temporary buffers (GBs
for a ResNet-50 train step) with `malloc`. By default glibc serves chunks above 32 MB
with `mmap`, gives them back with `munmap` when freed, gives every thread its own arena
(whose large chunks are mmap'd too) and trims the heap top: so each step page-faults
its whole working set in again, and the kernel zeroes every page. The ResNet50-IBN-a
train step and extractor are markedly slower without the settings below: the JAX rows of
`python benchmarks/run.py --nohost_allocator` against `python benchmarks/run.py`
(figures in docs/performance.md).

`configure()` makes the C allocator keep and reuse freed memory instead:
`mallopt(M_MMAP_MAX, 0)` (large chunks come from the heap), `mallopt(M_TRIM_THRESHOLD,
-1)` (the heap is never trimmed) and `mallopt(M_ARENA_MAX, 1)` (XLA's threads share
the main arena). The resident size then stays at the peak of the run (somewhat higher:
docs/performance.md) instead of going up and down every step. It changes no
result.

It acts only when JAX is going to run on the CPU (see `will_run_on_cpu`), with glibc,
and unless `FSAF_HOST_ALLOCATOR=default` is set. It is a setting of the process, not of
the experiment: the entry points (train.py, eval.py, `fsaf_jax.extract`) take a
`--host_allocator=auto|on|off` flag (`define_flag`) and call `configure_for(config,
choice)`; `auto` (the default) turns the settings on except for narrow models (last
stage width below `NARROW_WIDTH`: the tiny and demo configs), whose millisecond steps
are bound by host work (the single shared arena made the demo slower). Call it first
thing in an entry point, before JAX starts its backend (importing jax is fine), so that
XLA's threads attach to the shared arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform

from absl import flags

ENV_VAR = "FSAF_HOST_ALLOCATOR"  # 'default': leave malloc alone

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))
DESCRIPTION = "glibc mallopt: mmap_max=0, trim_threshold=never, arena_max=1"

_applied = False


def will_run_on_cpu() -> bool:
  """Whether JAX's default backend is (or is going to be) the CPU, without starting it.

  A started backend decides; otherwise `JAX_PLATFORMS` (its first entry) when set;
  otherwise the CPU unless an accelerator plugin (CUDA / ROCm / TPU) is installed.
  """
  try:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      import jax

      return jax.default_backend() == "cpu"
  except (ImportError, AttributeError):
    pass
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  plugins = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
  if importlib.util.find_spec("jax_plugins") is not None:
    import pkgutil

    import jax_plugins

    plugins |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
  if importlib.util.find_spec("libtpu") is not None:
    plugins.add("libtpu")
  return not plugins


def _mallopt(param: int, value: int) -> bool:
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  return libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1


def configure() -> bool:
  """Applies `SETTINGS` with `mallopt` when on CPU + glibc (see the module docstring).

  Returns:
    True if the settings are in effect (applied now or by an earlier call), False if
    not applicable (not the CPU backend, not glibc, or `FSAF_HOST_ALLOCATOR=default`).

  Raises:
    OSError: glibc rejected a setting.
  """
  global _applied
  if _applied:
    return True
  if os.environ.get(ENV_VAR, "").strip().lower() == "default":
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  if not will_run_on_cpu():
    return False
  apply_settings()
  _applied = True
  return True


def apply_settings() -> None:
  """Applies `SETTINGS` unconditionally (glibc only); `configure` decides when.

  Raises:
    OSError: glibc rejected a setting.
  """
  for param, value in SETTINGS:
    if not _mallopt(param, value):
      raise OSError(f"glibc mallopt({param}, {value}) failed; set {ENV_VAR}=default to skip")


CHOICES = ("auto", "on", "off")
# `auto`: off for models whose last stage is narrower (the tiny widths 8-64 and the
# demo's 16-128; ResNet-50's is 512).
NARROW_WIDTH = 256


def define_flag() -> flags.FlagHolder[str]:
  """Defines an entry point's `--host_allocator` flag (`CHOICES`, default 'auto')."""
  return flags.DEFINE_enum(
    "host_allocator",
    "auto",
    CHOICES,
    "CPU only: glibc malloc settings keeping XLA's buffers mapped between steps "
    "(fsaf_jax/core/host_allocator.py). auto: on, except for narrow models (the tiny and "
    f"demo configs); {ENV_VAR}=default in the environment turns them off too.",
  )


def configure_for(config, choice: str = "auto") -> bool:
  """`configure()` if `choice` asks for it for the run of `config`.

  Args:
    config: the run's ConfigDict (`model.widths` decides 'auto').
    choice: 'on', 'off', or 'auto' (on unless the model's last stage width is below
      `NARROW_WIDTH`: the tiny and demo configs, whose host-bound steps were slower
      with one arena).

  Returns:
    Whether the settings are in effect (see `configure`).

  Raises:
    ValueError: `choice` is not one of `CHOICES`.
  """
  if choice not in CHOICES:
    raise ValueError(f"host_allocator={choice!r}: must be one of {CHOICES}")
  if choice == "auto":
    choice = "on" if max(int(w) for w in config.model.widths) >= NARROW_WIDTH else "off"
  return configure() if choice == "on" else False
