r"""The train step compiled with and without its CPU compiler options, in one process, called
in turn (`fsaf_jax.core.compiler_options.train_compiler_options`: XLA's own convolution
kernel instead of YNNPACK's).

  taskset -c 1 python benchmarks/train_options.py                    # one thread
  python benchmarks/train_options.py --configs=baseline,fsaf_market --shapes=64x32x64
  python benchmarks/train_options.py --rounds=7

Per config and `HxWxBATCH`: both compiled `make_train_step` jits (the same `train_step`,
state and P x K batch; `compiler_options=None` against the options), one warm-up call
each, then `--rounds` rounds calling each once; the table gives the median seconds per
step and the gain (default / with options; > 1: the options are faster).
"""

import functools
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from absl import app, flags  # noqa: E402

from benchmarks.harness import Runner, interleave, machine_lines  # noqa: E402
from fsaf_jax.core import cli, host_allocator  # noqa: E402

_CONFIGS = flags.DEFINE_list(
  "configs", ["fastreid_bot_r50_ibn", "baseline", "fsaf_market"], "Configs of configs/."
)
_SHAPES = flags.DEFINE_list("shapes", ["256x128x32", "64x32x64"], "HxWxBATCH of the batches.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (each calls both steps once).")


def compare(name: str, shape: str, rounds: int) -> str:
  """One table row: median s/step without and with the options, and their ratio."""
  import jax

  from benchmarks.harness import NUM_CLASSES, load_config, pk_batch
  from fsaf_jax.core.compiler_options import train_compiler_options
  from fsaf_jax.core.mesh import batch_sharding, make_mesh, replicated
  from fsaf_jax.models.registry import create_model
  from fsaf_jax.training.train_state import create_train_state
  from fsaf_jax.training.train_step import train_step

  h, w, batch_size = (int(v) for v in shape.split("x"))
  config = load_config(name, "float32")
  model = create_model(config.model, NUM_CLASSES)
  mesh = make_mesh()
  images, labels = pk_batch(batch_size, image_size=(h, w))
  batch = jax.device_put({"image": images, "label": labels}, batch_sharding(mesh))
  runners = []
  for options in (None, train_compiler_options(mesh.devices.flat[0].platform)):
    state = create_train_state(
      config, model, jax.random.key(0), NUM_CLASSES, (h, w), steps_per_epoch=100, mesh=mesh
    )
    jitted = jax.jit(
      functools.partial(train_step, model=model, loss_config=config.loss),
      in_shardings=(replicated(mesh), batch_sharding(mesh)),
      out_shardings=(replicated(mesh), replicated(mesh)),
      donate_argnums=0,
      compiler_options=options,
    )
    holder = {"state": state, "step": jitted.lower(state, batch).compile()}

    def call(holder=holder):
      holder["state"], metrics = holder["step"](holder["state"], batch)
      jax.block_until_ready(metrics)

    runners.append(Runner("train", str(options), call, batch_size, None))
  interleave(runners, rounds)  # one warm-up call each, then the rounds
  plain, tuned = (r.median for r in runners)
  return f"{name:<22} {shape:<12} {plain:10.3f} {tuned:12.3f} {plain / tuned:6.2f}x"


def main(argv):
  del argv
  print("\n".join(machine_lines()))
  print(f"command: python benchmarks/train_options.py {' '.join(sys.argv[1:])}".strip())
  print(f"threads: {len(os.sched_getaffinity(0))} CPUs of {os.cpu_count()} (affinity)\n")
  print(f"{'config':<22} {'HxWxBATCH':<12} {'default s':>10} {'with options':>12} {'gain':>7}")
  for name in _CONFIGS.value:
    for shape in _SHAPES.value:
      print(compare(name, shape, _ROUNDS.value), flush=True)
  print(f"(median of {_ROUNDS.value} interleaved rounds after a warm-up call each)")


if __name__ == "__main__":
  host_allocator.configure()  # before JAX starts, as the entry points
  cli.show_only_ours()
  app.run(main)
