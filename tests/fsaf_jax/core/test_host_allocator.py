"""host_allocator: when the malloc settings apply, and that they reach mallopt."""

import platform

import pytest
from jax._src import xla_bridge

from fsaf_jax.core import host_allocator


@pytest.fixture
def fresh(monkeypatch):
  """Backends reported as not started, nothing applied yet, mallopt recorded not called."""
  calls = []
  monkeypatch.setattr(host_allocator, "_applied", False)
  monkeypatch.setattr(host_allocator, "_mallopt", lambda p, v: calls.append((p, v)) or True)
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.delenv(host_allocator.ENV_VAR, raising=False)
  monkeypatch.setattr(platform, "system", lambda: "Linux")
  monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
  return calls


@pytest.mark.parametrize(
  "platforms, expected", [("cpu", True), ("cpu,cuda", True), ("cuda", False), ("tpu,cpu", False)]
)
def test_jax_platforms_decides(fresh, monkeypatch, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_allocator.will_run_on_cpu() is expected
  assert host_allocator.configure() is expected
  assert fresh == (list(host_allocator.SETTINGS) if expected else [])


def test_started_backend_decides(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # ignored: the CPU backend is running
  assert host_allocator.will_run_on_cpu()


def test_applies_once(fresh, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_allocator.configure() and host_allocator.configure()
  assert fresh == list(host_allocator.SETTINGS)  # mmap_max 0, trim never, one arena
  assert dict(fresh) == {
    host_allocator.M_MMAP_MAX: 0,
    host_allocator.M_TRIM_THRESHOLD: -1,
    host_allocator.M_ARENA_MAX: 1,
  }


def test_opt_out_and_other_platforms(fresh, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv(host_allocator.ENV_VAR, "default")
  assert not host_allocator.configure()
  monkeypatch.delenv(host_allocator.ENV_VAR)
  monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", ""))
  assert not host_allocator.configure()
  monkeypatch.setattr(platform, "system", lambda: "Darwin")
  assert not host_allocator.configure()
  assert fresh == []


def test_rejected_setting_is_an_error(fresh, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(host_allocator, "_mallopt", lambda p, v: False)
  with pytest.raises(OSError, match="FSAF_HOST_ALLOCATOR=default"):
    host_allocator.configure()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_real_mallopt_binding():
  # M_PERTURB = 0 is glibc's default (no change to this process's allocator).
  m_perturb = -6
  assert host_allocator._mallopt(m_perturb, 0) is True


def test_flag_decides_and_auto_leaves_narrow_models_alone(fresh, monkeypatch):
  from configs import demo, fsaf, tiny

  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert "host_allocator" not in fsaf.get_config("market,fsaf")  # not an experiment field
  # auto (the entry points' default): off for the host-bound tiny and demo models.
  assert not host_allocator.configure_for(tiny.get_config())
  assert not host_allocator.configure_for(demo.get_config(), "auto")
  assert not host_allocator.configure_for(fsaf.get_config("market,fsaf"), "off")
  assert fresh == []
  with pytest.raises(ValueError, match="must be one of"):
    host_allocator.configure_for(demo.get_config(), "yes")
  assert host_allocator.configure_for(fsaf.get_config("market,fsaf"))
  assert fresh == list(host_allocator.SETTINGS)


def test_on_applies_them_to_a_narrow_model_too(fresh, monkeypatch):
  from configs import demo

  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_allocator.configure_for(demo.get_config(), "on")
  assert fresh == list(host_allocator.SETTINGS)
