r"""Where the time of the train step (or the extractor) goes, per HLO op, from a JAX trace.

  python benchmarks/profile_step.py                        # baseline train step
  python benchmarks/profile_step.py --config=fsaf --what=extract --batch=64
  python benchmarks/profile_step.py --dtype=bfloat16 --top=30
  python benchmarks/profile_step.py --config=fastreid_bot_r50_ibn --image_size=64,32 --batch=64
  python benchmarks/profile_step.py --config=baseline --last_stride=1 --steps=1

Runs the real jitted step under `jax.profiler.trace`, reads the trace back with
`jax.profiler.ProfileData`, and sums the duration of every executed HLO instruction
(XLA CPU thunk) over the traced steps. Each instruction is classified from the
compiled HLO: matmul-like ops (convolutions, dots, YNN/oneDNN library fusions that
contain them) as forward, input-gradient (dX) or weight-gradient (dW) by their
`op_name` metadata and result shape; everything else by opcode (elementwise loop
fusions, reductions, copies/transposes, ...). Prints the per-class totals with the
GFLOP/s the convolutions reach (FLOPs from `benchmarks.flops`, one forward's
worth per class), then the `--top` most expensive instructions.

With fast-reid installed (`python benchmarks/setup_peers.py`; `--peer=none` skips it),
fast-reid 1.4.0's own `Baseline` (the R50-IBN-a of its bagtricks config, at the same
last stride, batch and threads, in its own process with this process's malloc settings
unless `--peer_malloc=default`) then runs one step under `torch.profiler`, and a second
table puts the two side by side: forward convolutions / matmuls, their input and
weight gradients (`aten::convolution_backward` does both), dense matmuls, and
everything else (norms, activations, pooling, optimiser), with GFLOP/s. One thread
(`taskset -c 1`) makes the seconds comparable: with several, JAX's op time is summed
over threads and PyTorch's is wall time.
"""

import collections
import glob
import importlib.util
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from absl import app, flags  # noqa: E402

from benchmarks.profile_classes import (  # noqa: E402
  COMPARED,
  TORCH_CLASSES,
  classify,
  compared_class,
  parse_entry,
  torch_by_class,
)
from fsaf_jax.core import cli  # noqa: E402

_CONFIG = flags.DEFINE_string(
  "config",
  "baseline",
  "Model config: a module of configs/ (e.g. fastreid_bot_r50_ibn); fsaf = fsaf_market.",
)
_IMAGE_SIZE = flags.DEFINE_list("image_size", ["256", "128"], "Input height,width.")
_LAST_STRIDE = flags.DEFINE_integer("last_stride", None, "Overrides the config's last stride.")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "extract"], "Which step to profile.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 2, "Traced steps (after one warm-up step).")
_TOP = flags.DEFINE_integer("top", 25, "Most expensive instructions listed.")
_PEER = flags.DEFINE_enum(
  "peer",
  "auto",
  ["auto", "fastreid", "none"],
  "Also profile fast-reid's Baseline (same batch, last stride, threads) with torch.profiler "
  "and compare per class; auto: if fast-reid is installed (benchmarks/setup_peers.py).",
)
_PEER_MALLOC = flags.DEFINE_enum(
  "peer_malloc",
  "mallopt",
  ["mallopt", "default"],
  "C allocator of the PyTorch peer: this process's settings (mallopt) or glibc's default.",
)


def profile(fn, args, steps: int) -> dict[str, float]:
  """Seconds per HLO instruction name summed over `steps` calls of `fn(*args)`."""
  import jax

  out = fn(*args)
  jax.block_until_ready(out)
  trace_dir = tempfile.mkdtemp(prefix="fsaf_profile_")
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      out = fn(*args)
      jax.block_until_ready(out)
  (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
  data = jax.profiler.ProfileData.from_file(path)
  totals = collections.defaultdict(float)
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        if not event.name.startswith(("$", "end:", "ThreadpoolListener", "ThunkExecutor")):
          totals[event.name] += event.duration_ns * 1e-9
  return totals


def main(argv):
  del argv
  from fsaf_jax.core import host_allocator

  host_allocator.configure()  # as the entry points and benchmarks/run.py
  import jax
  import numpy as np

  from benchmarks.flops import count_flops
  from benchmarks.harness import NUM_CLASSES, load_config, pk_batch
  from fsaf_jax.models.registry import create_model

  image_size = tuple(int(v) for v in _IMAGE_SIZE.value)
  config = load_config(_CONFIG.value, _DTYPE.value, _LAST_STRIDE.value)
  model = create_model(config.model, NUM_CLASSES)
  images, labels = pk_batch(_BATCH.value, image_size=image_size)
  if _WHAT.value == "train":
    from fsaf_jax.core.mesh import batch_sharding, make_mesh
    from fsaf_jax.training.train_state import create_train_state
    from fsaf_jax.training.train_step import make_train_step

    mesh = make_mesh()
    state = create_train_state(
      config, model, jax.random.key(0), NUM_CLASSES, image_size, steps_per_epoch=100, mesh=mesh
    )
    batch = jax.device_put({"image": images, "label": labels}, batch_sharding(mesh))
    compiled = make_train_step(model, config.loss, mesh).jitted.lower(state, batch).compile()
    holder = {"state": state}

    def fn():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics

    args = ()
  else:
    from fsaf_jax.core.compiler_options import inference_compiler_options
    from fsaf_jax.evaluation.extractor import make_embed_fn

    x = np.zeros((1, *image_size, 3), np.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    # The extractor's own compiler options (`make_extractor` compiles with them).
    options = inference_compiler_options(jax.default_backend())
    compiled = jax.jit(make_embed_fn(model), compiler_options=options)
    compiled = compiled.lower(variables, images).compile()
    fn, args = compiled, (variables, jax.device_put(images))
  start = time.perf_counter()
  totals = profile(fn, args, _STEPS.value)
  wall = (time.perf_counter() - start) / (_STEPS.value + 1)
  insts = parse_entry(compiled.as_text())
  counts = count_flops(model, (_BATCH.value, *image_size, 3))
  params = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), images[:1].astype(np.float32)
  )["params"]
  kernels = [p.shape for p in jax.tree.leaves(params) if len(p.shape) >= 2]
  # A kernel's gradient also comes as the [kh * kw * Cin, Cout] matrix of a conv written
  # as a matmul (fsaf_jax/models/conv1x1.py, conv.py).
  kernel_shapes = {tuple(sorted(k)) for k in kernels}
  kernel_shapes |= {tuple(sorted((int(np.prod(k[:-1])), k[-1]))) for k in kernels}
  if _WHAT.value == "extract":
    kernel_shapes = set()  # a forward pass has no weight gradients
  fwd_matmul = counts.forward_flops

  by_class = collections.defaultdict(float)
  unknown = 0.0
  for name, seconds in totals.items():
    if name in insts:
      by_class[classify(insts[name], kernel_shapes)] += seconds / _STEPS.value
    else:
      unknown += seconds / _STEPS.value
  traced = sum(by_class.values()) + unknown
  print(
    f"{_WHAT.value} step of {_CONFIG.value} (last stride {config.model.last_stride}, "
    f"{_DTYPE.value}), batch {_BATCH.value} at "
    f"{image_size[0]}x{image_size[1]}: {wall:.2f} s/step wall (incl. tracing), "
    f"{traced:.2f} s of op time per step (summed over threads)"
  )
  print(f"forward matmul FLOPs (flops.py) {fwd_matmul / 1e9:.1f} G per step\n")
  print(f"{'class':<30} {'s/step':>8} {'share':>6} {'GFLOP/s':>8}")
  for cls, seconds in sorted(by_class.items(), key=lambda kv: -kv[1]):
    rate = ""
    if cls.startswith("matmul"):
      rate = f"{fwd_matmul / seconds / 1e9:8.1f}"  # one forward's matmul FLOPs
    print(f"{cls:<30} {seconds:8.3f} {seconds / traced:6.1%} {rate}")
  if unknown:
    print(f"{'(events not in ENTRY)':<30} {unknown:8.3f} {unknown / traced:6.1%}")
  print(f"\ntop {_TOP.value} instructions (s/step, class, result shape, op_name):")
  for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[: _TOP.value]:
    info = insts.get(name, {"shape": "?", "op_name": f"(not in ENTRY: {name})"})
    cls = classify(info, kernel_shapes) if name in insts else "?"
    op_name = info["op_name"].replace("jit(train_step)/", "").replace("jit(embed)/", "")
    print(f"  {seconds / _STEPS.value:7.3f}  {cls:<22} {info['shape']:<26} {op_name[-90:]}")
  peer = _PEER.value
  if peer == "auto":
    peer = "fastreid" if importlib.util.find_spec("fastreid") else "none"
    if peer == "none":
      print("\nPyTorch side skipped: fast-reid is not installed (python benchmarks/setup_peers.py)")
  if peer == "fastreid":
    if _DTYPE.value != "float32":
      print(f"\nPyTorch side skipped: fast-reid's Baseline runs in float32, not {_DTYPE.value}")
      return
    jax_rows = collections.defaultdict(float)
    for cls, seconds in by_class.items():
      jax_rows[compared_class(cls)] += seconds
    jax_rows["everything else"] += unknown
    compare_with_fastreid(jax_rows, fwd_matmul, config.model.last_stride, image_size, images)


def compare_with_fastreid(jax_rows, jax_fwd_flops, last_stride, image_size, images):
  """Profiles fast-reid's `Baseline` (its own process, same batch, last stride and threads)
  and prints the per-class table beside the JAX rows, then its most expensive ops."""
  from benchmarks.flops import count_flops
  from benchmarks.harness import NUM_CLASSES, load_config
  from benchmarks.torch_reference import Worker
  from fsaf_jax.models.registry import create_model

  plain = load_config("baseline", "float32", last_stride)  # fast-reid's network: R50-IBN-a
  counts = count_flops(create_model(plain.model, NUM_CLASSES), images.shape[:3] + (3,))
  worker = Worker(
    _WHAT.value,
    "float32",
    _BATCH.value,
    host_allocator=_PEER_MALLOC.value == "mallopt",
    model="fastreid",
    last_stride=last_stride,
    image_size=image_size,
  )
  try:
    worker()  # warm-up, as the JAX side
    self_times = worker.profile()
  finally:
    worker.close()
  torch_rows = torch_by_class(self_times)
  threads = len(os.sched_getaffinity(0))
  print(
    f"\nbeside fast-reid 1.4.0's Baseline (bagtricks R50-ibn, NCHW, last stride {last_stride}; "
    f"torch.profiler self times of one step; {threads} thread(s); malloc: {_PEER_MALLOC.value}):"
  )
  if threads > 1:
    print("  with several threads JAX's op time is summed over threads, PyTorch's is wall time")
  print(f"{'class':<28} {'JAX s':>8} {'GFLOP/s':>8} {'PyTorch s':>10} {'GFLOP/s':>8} {'JAX/PT':>7}")
  for row in (*COMPARED, "total"):
    j = sum(jax_rows.values()) if row == "total" else jax_rows.get(row, 0.0)
    t = sum(torch_rows.values()) if row == "total" else torch_rows[row]
    per = {"matmul fwd": 1, "matmul dX + dW": 2}.get(row)  # forwards' worth of FLOPs
    jr = f"{per * jax_fwd_flops / j / 1e9:8.1f}" if per and j else f"{'':>8}"
    tr = f"{per * counts.forward_flops / t / 1e9:8.1f}" if per and t else f"{'':>8}"
    ratio = f"{j / t:6.2f}x" if j and t else f"{'-':>7}"
    print(f"{row:<28} {j:8.3f} {jr} {t:10.3f} {tr} {ratio}")
  print(f"\nPyTorch top {_TOP.value} ops (self s/step, class):")
  for op, seconds in sorted(self_times.items(), key=lambda kv: -kv[1])[: _TOP.value]:
    print(f"  {seconds:7.3f}  {TORCH_CLASSES.get(op, 'other'):<28} {op}")


if __name__ == "__main__":
  cli.show_only_ours()  # third-party log lines only with --verbosity=1
  app.run(main)
