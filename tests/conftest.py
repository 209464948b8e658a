"""Test-session setup: simulated CPU devices and the persistent compilation cache.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at import of
the conftest, before any test module imports jax.
"""

import os
import pathlib
import time

NUM_SIMULATED_DEVICES = 4

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
    f"{_flags} --xla_force_host_platform_device_count={NUM_SIMULATED_DEVICES}"
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Child Python processes print every thread's stack on SIGABRT: a test whose ceiling is hit
# shows what its subprocess was doing (tests/reference/ceiling.py).
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE_DIR = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
_CACHE_SETTINGS = {
  "jax_compilation_cache_dir": str(_CACHE_DIR),
  "jax_persistent_cache_min_compile_time_secs": 0.5,
  "jax_persistent_cache_min_entry_size_bytes": 0,
  # A size limit turns on the cache's file lock: the xdist workers and the subprocesses
  # the tests start read and write the one folder at once, and read whole entries.
  "jax_compilation_cache_max_size": 4 << 30,
}
# Entries written before the limit was set have no access-time file, which the limited
# cache needs for each entry: give them one (now) rather than fail to write new ones.
if _CACHE_DIR.is_dir():
  for _entry in _CACHE_DIR.glob("*-cache"):
    _atime = _entry.with_name(_entry.name.removesuffix("-cache") + "-atime")
    if not _atime.exists():
      _atime.write_bytes(time.time_ns().to_bytes(8, "little"))
for _name, _value in _CACHE_SETTINGS.items():
  jax.config.update(_name, _value)
  # The same cache for the subprocesses the tests start (train.py, eval.py, the CLIs).
  os.environ.setdefault(_name.upper(), str(_value))


@pytest.fixture(scope="session")
def num_devices() -> int:
  """Number of simulated CPU devices this test session runs with."""
  return jax.device_count()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  """The tiny synthetic training-run dataset (tests/reference/tiny_synthetic_run.py),
  generated and built once per session; tests only read it."""
  from tests.reference import tiny_synthetic_run  # noqa: PLC0415 (keeps conftest light)

  root = tmp_path_factory.mktemp("tiny_data")
  tiny_synthetic_run.prepare_data(root)
  return root


@pytest.fixture(scope="session")
def tiny_run(data_root, tmp_path_factory):
  """One uninterrupted tiny training run (tests/reference/tiny_synthetic_run.py's config,
  config name 'tiny', the batch-index log), trained once per session: (workdir, the
  `TrainResult`). Tests only read the workdir (copy it to change it)."""
  from fsaf_jax.training import train_loop  # noqa: PLC0415 (keeps conftest light)
  from tests.reference import tiny_synthetic_run  # noqa: PLC0415
  from tests.reference.batch_index_log import BatchIndexLog  # noqa: PLC0415

  workdir = tmp_path_factory.mktemp("tiny_run")
  result = train_loop.train_and_evaluate(
    tiny_synthetic_run.config(data_root),
    workdir,
    config_name="tiny",
    on_step=BatchIndexLog(workdir),
  )
  return workdir, result


def pytest_xdist_auto_num_workers(config) -> int:
  """`-n auto` (pyproject.toml): one test process per CPU this process may run on, at most
  4 (each holds a few GiB: the tiny runs, compiled steps and PyTorch)."""
  return max(1, min(len(os.sched_getaffinity(0)), 4))
