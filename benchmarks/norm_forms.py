r"""The train step and the extractor with Flax's normalisation form and with the folded
one (`fsaf_jax.models.norm`), in one process, called in turn.

  taskset -c 1 python benchmarks/norm_forms.py                # one thread
  python benchmarks/norm_forms.py --what=extract --shapes=256x128x64,64x32x64
  python benchmarks/norm_forms.py --configs=baseline --rounds=7

`fsaf_jax.models.norm` computes every BatchNorm / InstanceNorm as `x * a + b` with
per-channel a = scale * rsqrt(var + eps), b = bias - mean * a; Flax's layers compute
`(x - mean) * a + bias`. Per config, `HxWxBATCH` and step: the production step
(`make_train_step` with its compiler options, or `make_extractor`) traced once with
`fsaf_jax.models.norm.normalize` swapped for Flax's form and once as is, one warm-up
call each, then `--rounds` rounds calling each once; the table gives the median seconds
and the gain (Flax's form / folded; > 1: the folded form is faster).
"""

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
_WHAT = flags.DEFINE_list("what", ["train", "extract"], "Steps to time: train, extract.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (each calls both steps once).")


def flax_form(x, mean, var, scale, bias, epsilon):
  """Flax's `_normalize`: (x - mean) * (scale * rsqrt(var + eps)) + bias."""
  import jax

  mul = jax.lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  y = (x - mean) * mul
  return y + bias if bias is not None else y


def build(what: str, name: str, shape: str, form):
  """A `call()` running one step of `what` with the model traced under `form`."""
  import jax
  import jax.numpy as jnp

  from benchmarks.harness import NUM_CLASSES, load_config, pk_batch
  from fsaf_jax.core.mesh import batch_sharding, make_mesh
  from fsaf_jax.evaluation.extractor import make_extractor
  from fsaf_jax.models import norm
  from fsaf_jax.models.registry import create_model
  from fsaf_jax.training.train_state import create_train_state
  from fsaf_jax.training.train_step import make_train_step

  h, w, batch_size = (int(v) for v in shape.split("x"))
  config = load_config(name, "float32")
  model = create_model(config.model, NUM_CLASSES)
  images, labels = pk_batch(batch_size, image_size=(h, w))
  folded = norm.normalize
  norm.normalize = form  # looked up when the model is traced, i.e. in the first call
  try:
    if what == "train":
      mesh = make_mesh()
      batch = jax.device_put({"image": images, "label": labels}, batch_sharding(mesh))
      holder = {
        "state": create_train_state(
          config, model, jax.random.key(0), NUM_CLASSES, (h, w), steps_per_epoch=100, mesh=mesh
        )
      }
      step = make_train_step(model, config.loss, mesh)

      def call():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)

    else:
      init = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))
      variables = init(jnp.zeros((1, h, w, 3), jnp.float32))
      extractor = make_extractor(model, variables, batch_size=batch_size, image_size=(h, w))

      def call():
        extractor(images)

    call()  # trace, compile, warm up
  finally:
    norm.normalize = folded
  return call


def compare(what: str, name: str, shape: str, rounds: int) -> str:
  """One table row: median s/step with Flax's form and folded, and their ratio."""
  from fsaf_jax.models import norm

  runners = [
    # `build` has traced, compiled and warmed up each under its form.
    Runner(what, label, build(what, name, shape, form), 1, None, warm_up=False)
    for label, form in (("Flax form", flax_form), ("folded", norm.normalize))
  ]
  interleave(runners, rounds)
  flax_s, folded_s = (r.median for r in runners)
  return (
    f"{what:<8} {name:<22} {shape:<12} {flax_s:10.3f} {folded_s:10.3f} {flax_s / folded_s:6.2f}x"
  )


def main(argv):
  del argv
  print("\n".join(machine_lines()))
  print(f"command: python benchmarks/norm_forms.py {' '.join(sys.argv[1:])}".strip())
  print(f"threads: {len(os.sched_getaffinity(0))} CPUs of {os.cpu_count()} (affinity)\n")
  print(
    f"{'step':<8} {'config':<22} {'HxWxBATCH':<12} {'Flax form':>10} {'folded':>10} {'gain':>7}"
  )
  for what in _WHAT.value:
    for name in _CONFIGS.value:
      for shape in _SHAPES.value:
        print(compare(what, name, shape, _ROUNDS.value), flush=True)
  print(f"(median seconds of {_ROUNDS.value} interleaved rounds after a warm-up call each)")


if __name__ == "__main__":
  host_allocator.configure()  # before JAX starts, as the entry points
  cli.show_only_ours()
  app.run(main)
