r"""Input-pipeline throughput next to what the FSAF train step consumes.

Measures, at the model input size (default 256x128, Market images are 128x64):
  * the training pipeline (grain: P x K sampling, decode, resize, flip, pad-crop,
    random erasing, batching, transfer to the devices) with 0 and 2 worker processes;
  * the evaluation pipeline (decode + resize in threads, padded fixed-size batches);
  * the full-size model's train-step consumption: a jitted `value_and_grad` of a
    cross-entropy loss on `create_model(configs/fsaf_market.py)` at batch 32;
and prints the ratio pipeline / consumption (target: >= 3).

Run (synthetic 128x64 JPEGs, a few minutes on a 2-core CPU, most of it the model step):
  python benchmarks/input_pipeline.py
On a built dataset:
  python benchmarks/input_pipeline.py --data_dir=~/tensorflow_datasets --dataset=market1501
Pipelines only:
  python benchmarks/input_pipeline.py --model_steps=0
"""

import io
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from configs import fsaf_market  # noqa: E402
from data_pipelines import logs, paths  # noqa: E402
from data_pipelines.eval_pipeline import create_eval_batches  # noqa: E402
from data_pipelines.train_pipeline import create_train_iterator  # noqa: E402

_DATA_DIR = paths.DEFINE_path("data_dir", None, "TFDS data_dir of a built dataset.")
_DATASET = flags.DEFINE_string("dataset", "market1501", "TFDS builder (with --data_dir).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 400, "Synthetic images (no --data_dir).")
_SECONDS = flags.DEFINE_float("seconds", 8.0, "Time each pipeline for about this long.")
_MODEL_STEPS = flags.DEFINE_integer("model_steps", 3, "Timed train steps (0: skip model).")
_MODEL_BATCH = flags.DEFINE_integer("model_batch", 32, "Train-step batch size.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 128, "Eval batch size.")


def machine_header() -> str:
  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return (
    f"CPU: {cpu} | cores: {os.cpu_count()} | JAX {jax.__version__} "
    f"({jax.default_backend()}, {jax.device_count()} devices) | "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )


def synthetic_source(num_images: int, seed: int = 0, images_per_id: int = 8) -> list[dict]:
  """Market-sized (128x64) JPEGs of smooth random colour fields plus noise."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(num_images):
    coarse = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((64, 128), Image.BILINEAR), np.int16)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    records.append(
      {
        "image": buffer.getvalue(),
        "person_id": i // images_per_id,
        "camera_id": int(rng.integers(0, 6)),
        "file_name": f"{i // images_per_id:04d}_c1s1_{i:06d}_00.jpg",
      }
    )
  return records


def train_pipeline_rate(source, config, mesh, num_workers: int, seconds: float) -> float:
  """Images/s of the training iterator after its first batch (startup excluded)."""
  config = config.copy_and_resolve_references()
  config.input.num_workers = num_workers
  with create_train_iterator(source, config, mesh, seed=0) as it:
    batch = next(it)
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
      batch = next(it)
      images += batch["image"].shape[0]
    jax.block_until_ready(batch)
    return images / (time.perf_counter() - start)


def eval_pipeline_rate(source, batch_size: int, image_size, seconds: float) -> float:
  """Images/s of full passes of the evaluation pipeline over the source."""
  start, images = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    for batch in create_eval_batches(source, batch_size, image_size):
      images += int(batch["mask"].sum())
  return images / (time.perf_counter() - start)


def model_consumption_rate(config, batch_size: int, steps: int) -> float:
  """Images/s of a jitted value_and_grad of CE on the full model (after warm-up)."""
  import optax

  from fsaf_jax.models.preprocessing import normalize_images
  from fsaf_jax.models.registry import create_model

  num_classes = 751
  model = create_model(config.model, num_classes)
  height, width = config.input.image_size
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8))
  labels = jax.device_put(rng.integers(0, num_classes, (batch_size,), dtype=np.int32))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
    normalize_images(images[:2])
  )

  def loss_fn(params, batch_stats, images, labels):
    out, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      normalize_images(images),
      train=True,
      mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    return loss, updates["batch_stats"]

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  params, batch_stats = variables["params"], variables["batch_stats"]
  jax.block_until_ready(step(params, batch_stats, images, labels))  # compile + warm-up
  start = time.perf_counter()
  for _ in range(steps):
    (_, batch_stats), grads = step(params, batch_stats, images, labels)
  jax.block_until_ready(grads)
  return steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  config = fsaf_market.get_config()
  size = tuple(config.input.image_size)
  if _DATA_DIR.value:
    from data_pipelines.datasets.source import load_source

    train_source = load_source(_DATASET.value, "train", _DATA_DIR.value)
    eval_source = load_source(_DATASET.value, "query", _DATA_DIR.value)
    data = f"{_DATASET.value} (train {len(train_source)}, query {len(eval_source)} images)"
  else:
    train_source = eval_source = synthetic_source(_NUM_IMAGES.value)
    data = f"{len(train_source)} synthetic 128x64 JPEGs"
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  p, k = config.input.num_identities, config.input.num_instances

  print(machine_header())
  print(f"data: {data}; model input {size[0]}x{size[1]}\n")
  rows = []
  for workers in (0, 2):
    rate = train_pipeline_rate(train_source, config, mesh, workers, _SECONDS.value)
    rows.append((f"train pipeline, P x K = {p} x {k}, {workers} workers", rate))
  eval_rate = eval_pipeline_rate(eval_source, _EVAL_BATCH.value, size, _SECONDS.value)
  rows.append((f"eval pipeline, batch {_EVAL_BATCH.value}, {os.cpu_count()} threads", eval_rate))
  consumption = None
  if _MODEL_STEPS.value > 0:
    consumption = model_consumption_rate(config, _MODEL_BATCH.value, _MODEL_STEPS.value)
    rows.append((f"FSAF train step (value_and_grad CE), batch {_MODEL_BATCH.value}", consumption))

  print(f"{'stage':<58} {'images/s':>10} {'x step':>8}")
  for name, rate in rows:
    ratio = f"{rate / consumption:8.1f}" if consumption and "pipeline" in name else ""
    print(f"{name:<58} {rate:>10.1f} {ratio:>8}")
  if consumption:
    worst = min(rate for name, rate in rows if "train pipeline" in name)
    verdict = "OK" if worst >= 3 * consumption else "BELOW TARGET"
    print(
      f"\nslowest train pipeline / train step = {worst / consumption:.1f} (target >= 3): {verdict}"
    )


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  app.run(main)
