r"""The fsaf-jax benchmark suite: one command, one table.

  python benchmarks/run.py            # every published config, 3 train and 2 extract shapes
  python benchmarks/run.py --quick    # shorter: baseline config, float32, 2 rounds
  taskset -c 1 python benchmarks/run.py --configs=baseline,fastreid_bot_r50_ibn \
      --train_shapes=64x32x64 --skip_sections=extract,bfloat16,evaluation,pipeline
      # a subset, on one core (1 thread for XLA and PyTorch)

Prints, under a header naming the machine (CPU, cores, CPUs this process may use, load
average, library versions, XLA_FLAGS):
  * the train step (`fsaf_jax.training.train_step.make_train_step`: real losses, real
    optimiser, a P x K label batch) of each config of `--configs` (the published
    `configs/*.py`, each with its own last stride) at each `--train_shapes` (HxWxBATCH;
    default 256x128 x 32 and x 64, 64x32 x 64), float32 and bfloat16: compile time,
    images/s, achieved GFLOP/s, and the ratio to fast-reid 1.4.0's own `Baseline`
    (bagtricks R50-ibn, at the same last stride; `benchmarks/torch_reference.py`) timed
    in the same run, beside the in-repo PyTorch R50-IBN-a BoT step (channels-last,
    float32 / bf16 autocast);
  * the feature extractor (`fsaf_jax.evaluation.extractor.make_extractor`) of the same
    configs at `--extract_shapes`, against the same peers in eval mode;
  * on a GPU / TPU, the model FLOP utilisation (MFU) from the model's FLOP count and
    the device's peak (`benchmarks/peak_flops.py`); PyTorch is skipped there;
  * evaluation / re-ranking timings (`benchmarks/evaluation.py`) and input-pipeline
    images/s (`benchmarks/input_pipeline.py`), reused by import.

Threads: XLA's CPU thread pool and each PyTorch worker use the CPUs the process may run
on (its affinity): run under `taskset -c 1` for one thread each, unpinned for all cores.

Timing: every figure is the median over rounds of one call each, after a warm-up call,
with `jax.block_until_ready`; JAX and PyTorch runners are interleaved round by round
(JAX step, PyTorch step, JAX step, ...) so machine load affects both alike. The
ratio 'vs FR' is fast-reid's median time over JAX's. Compile time is
`jit(...).lower(...).compile()` wall time (no persistent compilation cache here).

FLOP convention (`benchmarks.flops`): conv / dense / attention MACs x 2 counted
from the layer shapes, forward pass only; a train step = 3 x forward. Normalisation,
activations, pooling and softmax are not counted.

C allocator: `fsaf_jax.core.host_allocator.configure()` runs first, as in the entry points
(glibc `mallopt` settings that keep freed memory mapped: without them the train step
and the extractor are slower, page-faulting their buffers in every call);
`--nohost_allocator` measures without. PyTorch runs in worker processes, with the
default malloc (as PyTorch users run it) and with the same settings ('+m'), so both
ratios are printed (`--peer_malloc` selects).

XLA options: no XLA_FLAGS are set (XLA_FLAGS is printed as found). The steps are
compiled with the options of `fsaf_jax.core.compiler_options`, as in train.py / eval.py /
extract.py (CPU only): the train step with YNNPACK's individual convolutions turned off
(XLA's own convolution kernel, which uses every thread where YNNPACK's leaves the
64-channel convolutions on one), the extractor with
`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT` (YNNPACK fuses each dot
with its epilogue). `xla_cpu_use_onednn`, `..._onednn_fusion_type=..._DOT`,
`xla_cpu_use_xnnpack`, the concurrency-optimised scheduler and
`--xla_cpu_prefer_vector_width=512` were no faster for the train step (each can be tried
as `XLA_FLAGS=--<option> python benchmarks/run.py --quick
--skip_sections=extract,torch,evaluation,pipeline`).
"""

import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from absl import app, flags  # noqa: E402

from benchmarks import evaluation, input_pipeline, peak_flops  # noqa: E402  (flags: --rounds, ...)
from benchmarks.harness import (  # noqa: E402
  CONFIGS,
  NUM_CLASSES,
  Runner,
  interleave,
  load_config,
  machine_lines,
  pk_batch,
)
from fsaf_jax.core import cli  # noqa: E402

_QUICK = flags.DEFINE_bool(
  "quick", False, "Smaller run: baseline model, float32, 2 rounds, no re-ranking."
)
_MODEL_ROUNDS = flags.DEFINE_integer(
  "model_rounds", None, "Timed rounds of the train / extract runners (default 3; quick 2)."
)
_CONFIGS = flags.DEFINE_list(
  "configs", list(CONFIGS), "Configs (configs/<name>.py) timed; quick: baseline."
)
_TRAIN_SHAPES = flags.DEFINE_list(
  "train_shapes", ["256x128x32", "256x128x64", "64x32x64"], "Train-step HxWxBATCH (P x 4)."
)
_EXTRACT_SHAPES = flags.DEFINE_list(
  "extract_shapes", ["256x128x64", "64x32x64"], "Feature-extraction HxWxBATCH."
)
_PEERS = flags.DEFINE_list(
  "peers", ["fastreid", "reference"], "PyTorch peers: fastreid (fast-reid's Baseline), reference."
)
_PEER_MALLOC = flags.DEFINE_list(
  "peer_malloc", ["default", "mallopt"], "C allocator settings of the PyTorch peers."
)
_SECTIONS = flags.DEFINE_list(
  "skip_sections",
  [],
  "Sections to skip: train, extract, torch, bfloat16, evaluation, pipeline.",
)
_HOST_ALLOCATOR = flags.DEFINE_bool(
  "host_allocator", True, "Apply fsaf_jax.core.host_allocator (malloc settings) in this process."
)
_WITH_MSMT = flags.DEFINE_bool(
  "with_msmt", False, "Also run evaluation.py's MSMT17-scale memory run (several minutes)."
)


def jax_train_runner(name: str, dtype: str, images, labels) -> Runner:
  """The real jitted data-parallel train step of config `name` on one fixed batch."""
  import jax

  from benchmarks.flops import count_flops
  from fsaf_jax.core.mesh import batch_sharding, make_mesh
  from fsaf_jax.models.registry import create_model
  from fsaf_jax.training.train_state import create_train_state
  from fsaf_jax.training.train_step import make_train_step

  config = load_config(name, dtype)
  model = create_model(config.model, NUM_CLASSES)
  mesh = make_mesh()
  size = images.shape[1:3]
  state = create_train_state(
    config, model, jax.random.key(0), NUM_CLASSES, size, steps_per_epoch=100, mesh=mesh
  )
  batch = jax.device_put({"image": images, "label": labels}, batch_sharding(mesh))
  step = make_train_step(model, config.loss, mesh)
  start = time.perf_counter()
  compiled = step.jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state, "metrics": []}

  def call():
    holder["state"], metrics = compiled(holder["state"], batch)
    holder["metrics"].append(jax.block_until_ready(metrics))

  flops = count_flops(model, images.shape[:3] + (3,)).train_flops
  runner = Runner("train", f"JAX {name}", call, len(images), flops)
  runner.dtype, runner.compile_s, runner.holder = dtype, compile_s, holder
  runner.last_stride = config.model.last_stride
  return runner


def jax_extract_runner(name: str, dtype: str, images) -> Runner:
  """The jitted fixed-batch feature extractor of config `name` (random init)."""
  import jax
  import jax.numpy as jnp

  from benchmarks.flops import count_flops
  from fsaf_jax.evaluation.extractor import make_extractor
  from fsaf_jax.models.registry import create_model

  config = load_config(name, dtype)
  model = create_model(config.model, NUM_CLASSES)
  size = tuple(images.shape[1:3])
  x = jnp.zeros((1, *size, 3), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
  extractor = make_extractor(model, variables, batch_size=len(images), image_size=size)
  # Compile time of the extractor's own jitted step (its first call below reuses it).
  device_images = jax.device_put(images)
  start = time.perf_counter()
  extractor._step.lower(extractor.variables, device_images).compile()
  compile_s = time.perf_counter() - start
  output = extractor(images)
  flops = count_flops(model, images.shape[:3] + (3,)).forward_flops
  runner = Runner("extract", f"JAX {name}", lambda: extractor(images), len(images), flops)
  runner.dtype, runner.compile_s, runner.output = dtype, compile_s, output
  runner.last_stride = config.model.last_stride
  return runner


PEER_NAMES = {"fastreid": "fast-reid Baseline", "reference": "PyTorch R50-IBN-a"}


def torch_runners(kind, dtype, images, last_strides, peers, mallocs) -> list[Runner]:
  """The PyTorch peers (`benchmarks/torch_reference.py`), each in its own process: fast-reid's
  `Baseline` (bagtricks R50-ibn; float32 only) and the in-repo reference, at each last
  stride of the JAX rows, with glibc's default malloc ('default', as PyTorch users run
  it) and / or the JAX process's `fsaf_jax.core.host_allocator` settings ('mallopt')."""
  from benchmarks import torch_reference
  from benchmarks.flops import count_flops
  from fsaf_jax.models.registry import create_model

  batch, size = len(images), tuple(images.shape[1:3])
  runners = []
  for last_stride in sorted(last_strides):
    config = load_config("baseline", "float32", last_stride)  # = the PyTorch models
    counts = count_flops(create_model(config.model, NUM_CLASSES), (batch, *size, 3))
    flops = counts.train_flops if kind == "train" else counts.forward_flops
    for peer in peers:
      if peer == "fastreid" and dtype != "float32":
        continue
      for malloc in mallocs:
        worker = torch_reference.Worker(
          kind,
          dtype,
          batch,
          host_allocator=malloc == "mallopt",
          model=peer,
          last_stride=last_stride,
          image_size=size,
        )
        name = f"{PEER_NAMES[peer]} ls{last_stride}" + (" +m" if malloc == "mallopt" else "")
        runner = Runner(kind, name, worker, batch, flops)
        runner.dtype, runner.worker, runner.last_stride = dtype, worker, last_stride
        runner.peer, runner.malloc = peer, malloc
        runners.append(runner)
  return runners


HEADER = (
  f"{'section':<8} {'runner':<32} {'dtype':<9} {'LS':>2} {'compile s':>9} {'median s':>8} "
  f"{'best s':>7} {'img/s':>7} {'GFLOP':>7} {'GFLOP/s':>8} {'MFU':>6} {'vs FR':>6} {'vs FR+m':>7}"
)


def format_rows(runners: list[Runner]) -> list[str]:
  """Table rows (img/s and GFLOP/s from the median). JAX rows get the model FLOP
  utilisation of the devices (MFU, `benchmarks/peak_flops.py`; '-' where the device's
  peak is not known, e.g. CPUs) and the speed ratio to fast-reid's `Baseline` at the
  same last stride: its median time / JAX's (> 1: JAX faster), with the default malloc
  ('vs FR') and with the same malloc settings as JAX ('vs FR+m')."""
  import jax

  peers = {(r.last_stride, r.malloc): r for r in runners if getattr(r, "peer", None) == "fastreid"}
  kind, num_devices = jax.devices()[0].device_kind, jax.device_count()
  rows = []
  for r in runners:
    compile_txt = f"{r.compile_s:9.1f}" if r.compile_s is not None else f"{'-':>9}"
    gflop = f"{r.flops * 1e-9:7.1f}" if r.flops else f"{'-':>7}"
    gflops = f"{r.flops * 1e-9 / r.median:8.1f}" if r.flops else f"{'-':>8}"
    util = None
    if r.flops and r.name.startswith("JAX"):
      util = peak_flops.mfu(r.flops, r.median, kind, r.dtype, num_devices)
    mfu_txt = f"{100 * util:5.1f}%" if util is not None else f"{'-':>6}"
    ratios = []
    for malloc in ("default", "mallopt"):
      pt = peers.get((r.last_stride, malloc))
      ok = r.name.startswith("JAX") and pt is not None
      ratios.append(f"{pt.median / r.median:.2f}x" if ok else "")
    rows.append(
      f"{r.group:<8} {r.name:<32} {r.dtype:<9} {r.last_stride:>2} {compile_txt} {r.median:8.2f} "
      f"{min(r.times):7.2f} {r.rate:7.2f} {gflop} {gflops} {mfu_txt} {ratios[0]:>6} {ratios[1]:>7}"
    )
  return rows


def bf16_checks(section: str, runners: list[Runner], names: list[str]) -> list[str]:
  """bfloat16 against float32 of the same model: embeddings (extract) or first-step loss."""
  import numpy as np

  lines = []
  for name in names:
    by_dtype = {r.dtype: r for r in runners if r.name == f"JAX {name}"}
    if not {"float32", "bfloat16"} <= set(by_dtype):
      continue
    f32, bf16 = by_dtype["float32"], by_dtype["bfloat16"]
    if section == "extract":
      cos = np.sum(np.asarray(f32.output) * np.asarray(bf16.output), axis=1)
      lines.append(
        f"  {name}: bfloat16 vs float32 embeddings (same weights): cosine min {cos.min():.4f} "
        f"mean {cos.mean():.4f}"
      )
    else:
      a, b = (float(r.holder["metrics"][0]["loss"]) for r in (f32, bf16))
      lines.append(
        f"  {name}: first-step loss float32 {a:.4f}, bfloat16 {b:.4f} "
        f"(rel. diff {abs(a - b) / abs(a):.1e})"
      )
  return lines


def parse_shape(text: str) -> tuple[int, int, int]:
  """'256x128x32' -> (H, W, batch)."""
  try:
    h, w, b = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise app.UsageError(f"shape {text!r}: must be HxWxBATCH, e.g. 256x128x32") from None
  return h, w, b


def model_section(section: str, shape, names, dtypes, skip, rounds) -> tuple[list, list]:
  """Builds, times (interleaved) and formats the train or extract runners of one shape."""
  h, w, batch = shape
  images, labels = pk_batch(batch, image_size=(h, w))
  runners = []
  for dtype in dtypes:
    jax_runners = []
    for name in names:
      print(
        f"[{section} {h}x{w}x{batch}] building and compiling JAX {name} {dtype} ...", flush=True
      )
      if section == "train":
        jax_runners.append(jax_train_runner(name, dtype, images, labels))
      else:
        jax_runners.append(jax_extract_runner(name, dtype, images))
    runners += jax_runners
    if "torch" not in skip:
      strides = {r.last_stride for r in jax_runners}
      runners += torch_runners(section, dtype, images, strides, _PEERS.value, _PEER_MALLOC.value)
  print(f"[{section}] timing {len(runners)} runners x {rounds} rounds ...", flush=True)
  try:
    interleave(runners, rounds)
  finally:
    for runner in runners:
      if hasattr(runner, "worker"):
        runner.worker.close()
  title = f"{section}: batch {batch} at {h}x{w}" + (
    " (P x K labels, K = 4; CE + triplet, Adam)" if section == "train" else ""
  )
  title += (
    "; LS = last stride; GFLOP = the model's FLOP count per call (benchmarks/flops.py, from"
    " the layer shapes); compile = lower + compile wall time; vs FR > 1: JAX faster than"
    " fast-reid's Baseline at the same last stride"
  )
  lines = [title, HEADER, *format_rows(runners), *bf16_checks(section, runners, names)]
  return lines, runners


def pipeline_section(train_rate: float | None) -> list[str]:
  """Input-pipeline images/s (`benchmarks/input_pipeline.py`), vs the train step's."""
  import jax
  import numpy as np

  from configs import fsaf_market

  fl = flags.FLAGS
  seconds = fl.seconds if fl["seconds"].present else 4.0  # input_pipeline.py's own flag
  config = fsaf_market.get_config()
  source = input_pipeline.synthetic_source(fl.num_images)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  rows = []
  for workers in (0, 2):
    rate = input_pipeline.train_pipeline_rate(source, config, mesh, workers, seconds)
    rows.append((f"train pipeline, P x K 16 x 4, {workers} workers", rate))
  size = tuple(config.input.image_size)
  rate = input_pipeline.eval_pipeline_rate(source, fl.eval_batch, size, seconds)
  rows.append((f"eval pipeline, batch {fl.eval_batch}", rate))
  lines = [
    f"input pipelines ({len(source)} synthetic 128x64 JPEGs -> {size[0]}x{size[1]}), "
    f"{seconds:g} s each:"
  ]
  for name, rate in rows:
    ratio = ""
    if train_rate and name.startswith("train"):
      ratio = f"  = {rate / train_rate:5.1f}x the JAX baseline float32 train step (target >= 3)"
    lines.append(f"  {name:<40} {rate:8.1f} img/s{ratio}")
  return lines


def main(argv):
  del argv
  from fsaf_jax.core import host_allocator

  # Before JAX starts its backend, as in the entry points (fsaf_jax/core/host_allocator.py).
  allocator = host_allocator.configure() if _HOST_ALLOCATOR.value else False
  skip = set(_SECTIONS.value)
  if _QUICK.value:
    skip.add("bfloat16")
  import jax

  backend = jax.default_backend()
  if backend != "cpu":
    # The PyTorch reference is a CPU build: on a GPU / TPU the table reports JAX's
    # images/s and MFU alone.
    skip.add("torch")
  rounds = _MODEL_ROUNDS.value or (2 if _QUICK.value else 3)
  dtypes = ["float32"] + ([] if "bfloat16" in skip else ["bfloat16"])
  names = ["baseline"] if _QUICK.value and not _CONFIGS.present else _CONFIGS.value
  unknown = sorted(set(names) - set(CONFIGS) - {"fsaf"})
  if unknown:
    raise app.UsageError(f"--configs: unknown {unknown}; published configs: {', '.join(CONFIGS)}")
  command = "python benchmarks/run.py " + " ".join(sys.argv[1:])
  lines = [*machine_lines(), f"command: {command.strip()}"]
  lines += [
    "JAX process C allocator: "
    + (
      f"{host_allocator.DESCRIPTION} (fsaf_jax/core/host_allocator.py)" if allocator else "default"
    )
    + "; PyTorch runs in worker processes (fast-reid 1.4.0's Baseline, bagtricks R50-ibn,"
    " NCHW; the in-repo PyTorch R50-IBN-a, channels-last), with the default malloc or '+m':"
    " the same settings as JAX.",
    f"threads: this process may run on {len(os.sched_getaffinity(0))} of {os.cpu_count()} "
    "CPUs (affinity, e.g. taskset): XLA's thread pool and each PyTorch worker "
    "(torch.set_num_threads) use that many.",
    "NOTE: the machine may be shared: absolute times are noisy; JAX and PyTorch runners are "
    "interleaved round by round, so compare the ratios.",
    f"JAX devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({backend}); MFU = "
    "model FLOPs / time / (peak x devices), peaks by device kind in benchmarks/peak_flops.py"
    + ("" if backend != "cpu" else " (none for CPUs)")
    + ("; PyTorch (a CPU build) skipped" if backend != "cpu" else "")
    + ".",
    "FLOPs: conv / dense / attention MACs x 2 from layer shapes, forward; train step = 3 x "
    "forward (benchmarks/flops.py). Times: median of "
    f"{rounds} interleaved rounds after 1 warm-up call, jax.block_until_ready.",
  ]
  print("\n".join(lines) + "\n", flush=True)

  train_rate = None
  sections = [("train", s) for s in _TRAIN_SHAPES.value]
  sections += [("extract", s) for s in _EXTRACT_SHAPES.value]
  for section, shape in sections:
    if section in skip:
      continue
    shape = parse_shape(shape)
    section_lines, runners = model_section(section, shape, names, dtypes, skip, rounds)
    if section == "train" and shape[:2] == (256, 128) and train_rate is None:
      train_rate = next((r.rate for r in runners if r.name == "JAX baseline"), None)
    lines += ["", *section_lines]
    print("\n".join(section_lines) + "\n", flush=True)

  if "evaluation" not in skip:
    fl = flags.FLAGS
    # The full-scale peer re-ranking needs a lot of memory: benchmarks/evaluation.py runs it.
    eval_skip = set(fl.skip) | {"rerank_full"} | (set() if _WITH_MSMT.value else {"msmt"})
    if _QUICK.value:
      eval_skip.add("rerank")
    print("[evaluation] benchmarks/evaluation.py sections ...", flush=True)
    eval_rounds = fl.rounds if fl["rounds"].present else 1  # evaluation.py's own flag
    eval_lines = evaluation.run(eval_rounds, eval_skip, fl.rerank_ref_fraction)
    eval_lines = [ln for ln in eval_lines if ln] + (
      [] if "msmt" not in eval_skip else ["(MSMT17 scale: --with_msmt)"]
    )
    lines += ["", "evaluation (benchmarks/evaluation.py):", *eval_lines]
    print("\n".join(eval_lines) + "\n", flush=True)

  if "pipeline" not in skip:
    print("[pipeline] benchmarks/input_pipeline.py pipelines ...", flush=True)
    pipeline_lines = pipeline_section(train_rate)
    lines += ["", *pipeline_lines]
    print("\n".join(pipeline_lines) + "\n", flush=True)

  lines.append(
    f"\nload average (1/5/15 min) at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
  )
  print("=" * 100)
  print("\n".join(lines))


if __name__ == "__main__":
  cli.show_only_ours()  # third-party log lines only with --verbosity=1
  app.run(main)
