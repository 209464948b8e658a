r"""3x3 convolutions at ResNet-50's Conv4_x / Conv5_x maps: XLA's convolution, the im2col
matmul form of `fsaf_jax/models/conv.py`, and PyTorch, forward and gradients.

  taskset -c 1 python benchmarks/small_map_conv.py          # one thread each
  python benchmarks/small_map_conv.py --rounds=5

On maps with fewer pixels than the window (4x2, 2x1; and the input gradient of the
stride-2 conv from 8x4), XLA:CPU swaps the convolution's operands and runs it far below
its matmul speed (docs/performance.md); the last rows are larger maps where XLA's
convolution is the faster form. Per shape: the best of `--rounds` calls after a warm-up
of `jax.jit`-ed XLA forward, input gradient (dX) and weight gradient (dW) convolutions,
`conv.conv_as_matmul`'s forward and its two gradients (one call), and
`torch.nn.functional.conv2d` (channels-last) forward and forward + autograd of both.
Torch uses as many threads as the process may run on (its CPU affinity).
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from absl import app, flags  # noqa: E402

from benchmarks.harness import best_time, machine_lines  # noqa: E402
from fsaf_jax.core import cli  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed calls per runner (best is printed).")

# [N, H, W, Cin], Cout, stride: the 64x32 x 64 maps of Conv4_x / Conv5_x, then larger ones.
SHAPES = [
  ((64, 4, 2, 512), 512, 1),
  ((64, 2, 1, 512), 512, 1),
  ((64, 4, 2, 256), 256, 1),
  ((64, 8, 4, 256), 256, 2),
  ((64, 8, 4, 128), 128, 1),
  ((32, 16, 8, 256), 256, 1),
]
PAD = ((1, 1), (1, 1))


def time_shape(shape, cout: int, s: int, rounds: int) -> str:
  """One table row: XLA conv fwd / dX / dW, conv_as_matmul fwd / grads, torch fwd / both."""
  import jax
  import numpy as np
  import torch
  from jax import lax

  from fsaf_jax.models.conv import conv_as_matmul, is_small_map

  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape, np.float32)
  k = rng.standard_normal((3, 3, shape[-1], cout), np.float32) * 0.02

  def conv(a, b, s=s):
    return lax.conv_general_dilated(a, b, (s, s), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def matmul(a, b, s=s):
    return conv_as_matmul(a, b, (s, s), PAD)

  xj, kj = jax.device_put(x), jax.device_put(k)
  y = jax.jit(conv)(xj, kj)
  g = jax.device_put(rng.standard_normal(y.shape, np.float32))
  timings = []
  for f in (conv, matmul):
    fwd = jax.jit(f)
    grads = jax.jit(lambda a, b, g, f=f: jax.vjp(f, a, b)[1](g))
    dx = jax.jit(lambda a, b, g, f=f: jax.vjp(f, a, b)[1](g)[0])
    dw = jax.jit(lambda a, b, g, f=f: jax.vjp(f, a, b)[1](g)[1])
    timings.append(best_time(lambda fwd=fwd: jax.block_until_ready(fwd(xj, kj)), rounds))
    if f is conv:
      for fn in (dx, dw):
        timings.append(best_time(lambda fn=fn: jax.block_until_ready(fn(xj, kj, g)), rounds))
    else:
      timings.append(best_time(lambda gr=grads: jax.block_until_ready(gr(xj, kj, g)), rounds))
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  xt.requires_grad_(True)
  kt.requires_grad_(True)
  gt = torch.from_numpy(np.asarray(g)).permute(0, 3, 1, 2)

  def pt_fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(xt, kt, stride=s, padding=1)

  def pt_both():
    out = torch.nn.functional.conv2d(xt, kt, stride=s, padding=1)
    torch.autograd.grad(out, (xt, kt), gt)

  timings += [best_time(pt_fwd, rounds), best_time(pt_both, rounds)]
  gflop = 2 * np.prod(y.shape) * 9 * shape[-1] / 1e9
  small = "yes" if is_small_map(shape[1:3], (3, 3), (s, s), PAD) else "no"
  ms = [f"{t * 1e3:8.1f}" for t in timings]
  return (
    f"{str(list(shape)) + f' -> {cout}, s{s}':<30} {gflop:5.2f} {small:>5} | {ms[0]} {ms[1]} "
    f"{ms[2]} | {ms[3][1:]} {ms[4]} | {ms[5][1:]} {ms[6]:>10}"
  )


def main(argv):
  del argv
  import torch

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  rounds = _ROUNDS.value
  print("\n".join(machine_lines()))
  print(f"command: python benchmarks/small_map_conv.py {' '.join(sys.argv[1:])}".strip())
  print(f"threads: {len(os.sched_getaffinity(0))} CPUs of {os.cpu_count()} (affinity)\n")
  print(
    f"{'[N, H, W, Cin] -> Cout, 3x3':<30} {'GFLOP':>5} {'small':>5} | {'XLA fwd':>8} "
    f"{'XLA dX':>8} {'XLA dW':>8} | {'mm fwd':>7} {'mm grads':>8} | {'PT fwd':>7} "
    f"{'PT f+grads':>10}"
  )
  for shape, cout, s in SHAPES:
    print(time_shape(shape, cout, s, rounds), flush=True)
  print("(ms, best of the rounds; mm = conv.conv_as_matmul; small = conv.py takes mm on CPU)")


if __name__ == "__main__":
  cli.show_only_ours()
  app.run(main)
