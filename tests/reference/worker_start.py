"""The start of a test worker process launched by `multiprocess.launch_processes`.

`join(devices_per_process, cache_dir)` must run before anything imports JAX: it asks
for that many simulated CPU devices, points the persistent compilation cache at
`cache_dir`, joins the other processes through `maybe_initialize_distributed` (the
`JAX_*` environment the launcher sets) and checks the process and device counts.
"""

import os


def join(devices_per_process: int, cache_dir: str) -> None:
  """Starts JAX on `devices_per_process` CPU devices and joins the other processes."""
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # noqa: PLC0415 (after the environment above)

  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  from fsaf_jax.core.distributed import maybe_initialize_distributed  # noqa: PLC0415

  assert maybe_initialize_distributed(), "expected the JAX_* environment to ask for it"
  num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  assert jax.process_count() == num_processes, jax.process_count()
  assert jax.device_count() == num_processes * devices_per_process, jax.devices()
