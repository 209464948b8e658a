r"""ResNet-50-IBN-a's convolutions at 256x128 x 32 on the CPU: YNNPACK (XLA's default), XLA's
own kernel (the train step's `fsaf_jax.core.compiler_options`) and PyTorch, per direction.

  taskset -c 1 python benchmarks/conv_kernels.py      # one thread each
  python benchmarks/conv_kernels.py                   # all cores
  python benchmarks/conv_kernels.py --rounds=5

Per shape (the stem, then one 3x3 convolution of each stage, Conv5_x at last stride 1):
the best of `--rounds` calls after a warm-up of the `jax.jit`-ed forward, input gradient
(dX) and weight gradient (dW), compiled with no options (jaxlib sends each convolution
to YNNPACK) and with `train_compiler_options('cpu')` (convolutions stay in XLA), then
`torch.nn.functional.conv2d` and `aten::convolution_backward` for dX and dW alone in
fast-reid's NCHW layout, with the JAX process's malloc settings. Torch uses as many
threads as the process may run on (its CPU affinity). Compare the columns between a
one-thread and an all-cores run: YNNPACK's convolution does not use a second thread
when the input has 64 channels or fewer (the stem and Conv2_x), XLA's kernel does.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from absl import app, flags  # noqa: E402

from benchmarks.harness import best_time, machine_lines  # noqa: E402
from fsaf_jax.core import cli, host_allocator  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed calls per runner (best is printed).")

# [N, H, W, Cin], kernel, Cout, stride: ResNet-50's 256x128 x 32 convolutions (last stride 1).
SHAPES = [
  ((32, 256, 128, 3), 7, 64, 2),
  ((32, 64, 32, 64), 3, 64, 1),
  ((32, 32, 16, 128), 3, 128, 1),
  ((32, 16, 8, 256), 3, 256, 1),
  ((32, 16, 8, 512), 3, 512, 1),
]


def time_shape(shape, k: int, cout: int, s: int, rounds: int) -> str:
  """One table row: fwd / dX / dW in ms for YNNPACK, XLA's kernel and PyTorch."""
  import jax
  import numpy as np
  import torch
  from jax import lax

  from fsaf_jax.core.compiler_options import train_compiler_options

  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape, np.float32)
  w = rng.standard_normal((k, k, shape[-1], cout), np.float32) * 0.02
  pad = ((k // 2, k // 2), (k // 2, k // 2))

  def conv(a, b):
    return lax.conv_general_dilated(a, b, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  xj, wj = jax.device_put(x), jax.device_put(w)
  y = jax.jit(conv)(xj, wj)
  g = jax.device_put(rng.standard_normal(y.shape, np.float32))
  ms = []
  for options in (None, train_compiler_options("cpu")):
    fns = (
      lambda a, b, g: conv(a, b),
      lambda a, b, g: jax.vjp(lambda a: conv(a, b), a)[1](g)[0],
      lambda a, b, g: jax.vjp(lambda b: conv(a, b), b)[1](g)[0],
    )
    for fn in fns:
      compiled = jax.jit(fn, compiler_options=options).lower(xj, wj, g).compile()
      ms.append(best_time(lambda c=compiled: jax.block_until_ready(c(xj, wj, g)), rounds))
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  gt = torch.from_numpy(np.asarray(g)).permute(0, 3, 1, 2).contiguous()
  args = (gt, xt, wt, None, [s, s], [k // 2] * 2, [1, 1], False, [0, 0], 1)
  ms.append(best_time(lambda: torch.nn.functional.conv2d(xt, wt, None, s, k // 2), rounds))
  for mask in ([True, False, False], [False, True, False]):
    ms.append(best_time(lambda m=mask: torch.ops.aten.convolution_backward(*args, m), rounds))
  gflop = 2 * np.prod(y.shape) * k * k * shape[-1] / 1e9
  cells = [f"{t * 1e3:7.1f}" for t in ms]
  return (
    f"{str(list(shape)) + f' {k}x{k}/{s} -> {cout}':<31} {gflop:5.2f} | "
    + " ".join(cells[0:3])
    + " | "
    + " ".join(cells[3:6])
    + " | "
    + " ".join(cells[6:9])
  )


def main(argv):
  del argv
  import torch

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  print("\n".join(machine_lines()))
  print(f"command: python benchmarks/conv_kernels.py {' '.join(sys.argv[1:])}".strip())
  malloc = host_allocator.DESCRIPTION
  print(f"threads: {threads} CPUs of {os.cpu_count()} (affinity); malloc: {malloc}\n")
  head = " ".join(f"{c:>7}" for c in ("fwd", "dX", "dW"))
  groups = ("YNNPACK (default)", "XLA (train options)", "PyTorch NCHW")
  print(f"{'':<31} {'':>5} | " + " | ".join(f"{g:^23}" for g in groups))
  print(f"{'[N, H, W, Cin] k x k/s -> Cout':<31} {'GFLOP':>5} | {head} | {head} | {head}")
  for shape, k, cout, s in SHAPES:
    print(time_shape(shape, k, cout, s, _ROUNDS.value), flush=True)
  print("(ms, best of the rounds; GFLOP per direction)")


if __name__ == "__main__":
  host_allocator.configure()  # before JAX starts, as the entry points
  cli.show_only_ours()
  app.run(main)
