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
"""

import collections
import glob
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from absl import app, flags  # noqa: E402

from data_pipelines import logs  # noqa: E402

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

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?) ([a-z][\w-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MATMUL = ("convolution", "dot")
_LIBRARY = ("__ynn_fusion", "__xnn_fusion", "__onednn_fusion")


def parse_entry(hlo_text: str) -> dict[str, dict]:
  """Instructions of the ENTRY computation (+ the opcodes inside each fusion).

  Returns:
    {name: {'shape', 'opcode', 'op_name', 'library', 'body_ops'}}.
  """
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and "{" in line and not line.startswith("}"):
      current = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
      current = current.lstrip("%")
      if line.startswith("ENTRY"):
        entry = current
      computations[current] = []
    elif current is not None and (m := _INSTRUCTION.match(line)):
      computations[current].append((m.group(1), m.group(2), m.group(3), line))
  body_ops = {name: {op for _, _, op, _ in insts} for name, insts in computations.items()}
  result = {}
  for name, shape, opcode, line in computations.get(entry, []):
    calls = re.search(r"calls=%([\w.-]+)", line)
    m = _OP_NAME.search(line)
    result[name] = {
      "shape": shape,
      "opcode": opcode,
      "op_name": m.group(1) if m else "",
      "library": next((lib for lib in _LIBRARY if lib in line), ""),
      "body_ops": body_ops.get(calls.group(1), set()) if calls else set(),
    }
  return result


def _dims(shape: str) -> list[int]:
  m = re.search(r"\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def classify(info: dict, kernel_shapes: set[tuple[int, ...]]) -> str:
  """Class of one instruction: 'matmul fwd' / 'matmul dX' / 'matmul dW', ... .

  Args:
    info: an entry of `parse_entry`.
    kernel_shapes: sorted dims of every parameter (and of its [prod(dims[:-1]),
      dims[-1]] matrix): a matmul whose result has such a shape (in any dimension
      order) is a weight gradient.
  """
  ops = info["body_ops"] | {info["opcode"]}
  op_name = info["op_name"]
  if ops & set(_MATMUL):
    if tuple(sorted(_dims(info["shape"]))) in kernel_shapes:
      return "matmul dW"
    if "transpose(" in op_name:
      return "matmul dX"
    if "/mhsa/" in op_name and "conv_general" not in op_name:
      return "attention matmul fwd"
    return "matmul fwd" if op_name else "matmul (no op_name)"
  if info["library"]:
    return "library fusion (no matmul)"
  if ops & {"reduce", "reduce-window"}:
    return "reduce / pool"
  if info["opcode"] in ("copy", "transpose") or ops <= {
    "copy",
    "transpose",
    "bitcast",
    "parameter",
  }:
    return "copy / transpose"
  if info["opcode"] == "fusion":
    return "elementwise fusion"
  return f"other ({info['opcode']})"


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
    from fsaf_jax.evaluation.extractor import make_embed_fn

    x = np.zeros((1, *image_size, 3), np.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    compiled = jax.jit(make_embed_fn(model)).lower(variables, images).compile()
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


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  app.run(main)
