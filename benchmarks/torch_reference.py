"""The PyTorch side of the benchmark: a BoT-style ResNet50-IBN-a train step and extractor.

The network is `tests/reference/torch_resnet_ibn.resnet50_ibn_a` (the official IBN-Net
definition) with the BNNeck head of `configs/baseline.py`: global average pool,
BatchNorm1d with its shift frozen at 0, bias-free classifier. The step is what
fast-reid / BoT run: label-smoothed cross-entropy (0.1) on the logits + batch-hard
triplet (margin 0.3, Euclidean) on the pre-BN feature, Adam(3.5e-4, weight_decay
5e-4). Eager mode, channels-last (the fast layout for oneDNN on CPU), float32 or
bfloat16 autocast (`torch.autocast('cpu', torch.bfloat16)`: weights and optimiser in
float32, as `torch.amp` recipes).

`fastreid_model` builds fast-reid 1.4.0's own `Baseline` from its bagtricks R50-ibn
config (`configs/Market1501/bagtricks_R50-ibn.yml`: Base-bagtricks with WITH_IBN) when
fast-reid is installed (`python benchmarks/setup_peers.py`); its train step is
fast-reid's forward and losses (CE eps 0.1 + batch-hard triplet 0.3) with
`torch.optim.Adam(3.5e-4, weight_decay=5e-4)`, in fast-reid's default NCHW layout.

`Worker` runs a step or an extractor in a separate process, so that PyTorch gets
its own threads and its own C allocator settings (the benchmark suite uses it). Only
benchmarks import this file (torch is a test / benchmark dependency).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a worker

from tests.reference.torch_resnet_ibn import resnet50_ibn_a  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BoTReID(nn.Module):
  """ResNet50-IBN-a + BNNeck, as `configs/baseline.py` (last stride 2).

  forward(images [N, 3, H, W] normalised) -> (feat [N, 2048] pre-BN, bn_feat, logits).
  """

  def __init__(self, num_classes: int, last_stride: int = 2):
    super().__init__()
    self.backbone = resnet50_ibn_a(last_stride=last_stride)
    self.backbone.fc = nn.Identity()
    self.bnneck = nn.BatchNorm1d(2048)
    self.bnneck.bias.requires_grad_(False)  # BNNeck: shift frozen at 0
    self.classifier = nn.Linear(2048, num_classes, bias=False)
    nn.init.normal_(self.classifier.weight, std=0.001)

  def forward(self, x: torch.Tensor):
    feat = self.backbone.features(x)["layer4"].mean(dim=(2, 3))
    bn_feat = self.bnneck(feat)
    return feat, bn_feat, self.classifier(bn_feat)


def batch_hard_triplet(feat: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
  """BoT's batch-hard triplet loss on Euclidean distances (float32)."""
  feat = feat.float()
  dist = torch.cdist(feat, feat).clamp(min=1e-6)
  same = labels[:, None] == labels[None, :]
  d_ap = torch.where(same, dist, torch.zeros_like(dist)).max(dim=1).values
  d_an = torch.where(same, torch.full_like(dist, 1e9), dist).min(dim=1).values
  return torch.relu(d_ap - d_an + margin).mean()


def to_torch_images(images: np.ndarray) -> torch.Tensor:
  """uint8 NHWC host images -> normalised float32 NCHW tensor in channels-last memory."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
  mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
  return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _autocast(dtype: str):
  if dtype == "float32":
    return contextlib.nullcontext()
  if dtype == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  raise ValueError(f"dtype={dtype!r}: must be 'float32' or 'bfloat16'")


def fastreid_model(num_classes: int, last_stride: int) -> nn.Module:
  """fast-reid 1.4.0's `Baseline` of its bagtricks R50-ibn config (random init).

  forward({'images': float [N, 3, H, W] in 0..255 (normalised in place), 'targets':
  int64 [N]}) -> dict of losses in train mode; [N, 2048] features in eval mode.
  """
  from fastreid.config import get_cfg
  from fastreid.modeling import build_model

  cfg = get_cfg()  # Base-bagtricks.yml + bagtricks_R50-ibn.yml, as YAML overrides:
  cfg.MODEL.META_ARCHITECTURE = "Baseline"
  cfg.MODEL.DEVICE = "cpu"
  cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
  cfg.MODEL.BACKBONE.NORM = "BN"
  cfg.MODEL.BACKBONE.DEPTH = "50x"
  cfg.MODEL.BACKBONE.LAST_STRIDE = last_stride  # the yml: 1; matched per benchmark row
  cfg.MODEL.BACKBONE.FEAT_DIM = 2048
  cfg.MODEL.BACKBONE.WITH_IBN = True
  cfg.MODEL.BACKBONE.PRETRAIN = False  # random init (timing only)
  cfg.MODEL.HEADS.NAME = "EmbeddingHead"
  cfg.MODEL.HEADS.NORM = "BN"
  cfg.MODEL.HEADS.WITH_BNNECK = True
  cfg.MODEL.HEADS.POOL_LAYER = "GlobalAvgPool"
  cfg.MODEL.HEADS.NECK_FEAT = "before"
  cfg.MODEL.HEADS.CLS_LAYER = "Linear"
  cfg.MODEL.HEADS.NUM_CLASSES = num_classes
  cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
  cfg.MODEL.LOSSES.CE.EPSILON = 0.1
  cfg.MODEL.LOSSES.CE.SCALE = 1.0
  cfg.MODEL.LOSSES.TRI.MARGIN = 0.3
  cfg.MODEL.LOSSES.TRI.HARD_MINING = True
  cfg.MODEL.LOSSES.TRI.NORM_FEAT = False
  cfg.MODEL.LOSSES.TRI.SCALE = 1.0
  return build_model(cfg)


def make_fastreid_train_step(
  images: np.ndarray, labels: np.ndarray, num_classes: int, last_stride: int, seed: int = 0
) -> Callable[[], float]:
  """fast-reid's `Baseline` train step on a fixed batch (float32; fast-reid's AMP is a
  GPU float16 setting). Returns `step() -> loss` (forward, backward, Adam update)."""
  from fastreid.utils.events import EventStorage

  torch.manual_seed(seed)
  model = fastreid_model(num_classes, last_stride).train()
  storage = EventStorage(0)  # fast-reid's trainer runs its steps inside one (loss logging)
  optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous()
  y = torch.from_numpy(np.asarray(labels, np.int64))

  def step() -> float:
    optimizer.zero_grad(set_to_none=True)
    with storage:
      losses = model({"images": x.clone(), "targets": y})  # normalised in place
    loss = sum(losses.values())
    loss.backward()
    optimizer.step()
    return loss.detach().item()

  return step


def make_fastreid_extractor(images: np.ndarray, last_stride: int, seed: int = 0):
  """fast-reid's `Baseline` in eval mode on a fixed batch: `extract() -> [B, 2048]`."""
  torch.manual_seed(seed)
  model = fastreid_model(751, last_stride).eval()
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous()

  def extract() -> np.ndarray:
    with torch.inference_mode():
      return nn.functional.normalize(model({"images": x.clone()}), dim=1).numpy()

  return extract


def make_train_step(
  images: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  dtype: str,
  seed: int = 0,
  last_stride: int = 2,
) -> Callable[[], float]:
  """A BoT train step on a fixed batch.

  Args:
    images: uint8 [B, H, W, 3]; labels: int [B] (P x K identities).
    num_classes: classifier outputs.
    dtype: 'float32' or 'bfloat16' (autocast).
    seed: torch seed of the initialisation.
    last_stride: stride of Conv5_x.

  Returns:
    `step() -> loss` running forward, backward and the Adam update (synchronous).
  """
  torch.manual_seed(seed)
  model = BoTReID(num_classes, last_stride).to(memory_format=torch.channels_last).train()
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.Adam(params, lr=3.5e-4, weight_decay=5e-4)
  x = to_torch_images(images)
  y = torch.from_numpy(np.asarray(labels, np.int64))

  def step() -> float:
    optimizer.zero_grad(set_to_none=True)
    with _autocast(dtype):
      feat, _, logits = model(x)
    ce = nn.functional.cross_entropy(logits.float(), y, label_smoothing=0.1)
    loss = ce + batch_hard_triplet(feat, y, margin=0.3)
    loss.backward()
    optimizer.step()
    return loss.detach().item()

  return step


def make_extractor(
  images: np.ndarray, dtype: str, seed: int = 0, last_stride: int = 2
) -> Callable[[], np.ndarray]:
  """Eval-mode embedding of a fixed batch (normalisation included, as the JAX extractor).

  Returns:
    `extract() -> float32 [B, 2048]` L2-normalised post-BNNeck features.
  """
  torch.manual_seed(seed)
  model = BoTReID(751, last_stride).to(memory_format=torch.channels_last).eval()

  def extract() -> np.ndarray:
    with torch.inference_mode(), _autocast(dtype):
      _, bn_feat, _ = model(to_torch_images(images))
      return nn.functional.normalize(bn_feat.float(), dim=1).numpy()

  return extract


class Worker:
  """A PyTorch train step or extractor running in its own process, called step by step.

  Its own process gives it its own threads and its own C allocator settings: with
  `host_allocator=False` it runs as a user would run PyTorch (glibc defaults), with True
  it gets the same `fsaf_jax.core.host_allocator` settings as the JAX process. The inputs
  are `benchmarks.harness.pk_batch(batch, image_size=image_size)`, the same images and
  labels as the parent's. `model` is 'reference' (`BoTReID`) or 'fastreid'
  (`fastreid_model`, float32 only). Torch uses as many threads as the process may run
  on (its CPU affinity, e.g. 1 under `taskset -c 1`). Calling the worker runs one step
  and returns when it is done.
  """

  def __init__(
    self,
    kind: str,
    dtype: str,
    batch: int,
    *,
    host_allocator: bool,
    model: str = "reference",
    last_stride: int = 2,
    image_size: tuple[int, int] = (256, 128),
  ):
    if kind not in ("train", "extract"):
      raise ValueError(f"kind={kind!r}: must be 'train' or 'extract'")
    if model not in ("reference", "fastreid"):
      raise ValueError(f"model={model!r}: must be 'reference' or 'fastreid'")
    args = [sys.executable, __file__, kind, dtype, str(batch), str(int(host_allocator))]
    args += [model, str(last_stride), f"{image_size[0]}x{image_size[1]}"]
    self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self._expect("ready")

  def _expect(self, what: str) -> str:
    line = self._proc.stdout.readline().strip()
    if not line.startswith(what):
      self.close()
      raise RuntimeError(f"PyTorch worker: expected {what!r}, got {line!r} (see its stderr above)")
    return line

  def __call__(self) -> None:
    self._proc.stdin.write("step\n")
    self._proc.stdin.flush()
    self._expect("done")

  def profile(self) -> dict[str, float]:
    """Runs one step under `torch.profiler` (CPU activity).

    Returns:
      {aten op name: self time in seconds}, summed over the op's calls in the step (an
      op's self time is its wall time on the calling thread, without its child ops).
    """
    self._proc.stdin.write("profile\n")
    self._proc.stdin.flush()
    return json.loads(self._expect("profile ")[len("profile ") :])

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.close()
      self._proc.wait(timeout=60)


def _worker_main(argv: list[str]) -> None:
  import os

  from benchmarks.harness import NUM_CLASSES, pk_batch
  from fsaf_jax.core import host_allocator

  kind, dtype, batch, with_host_allocator, model, last_stride, size = argv
  batch, last_stride = int(batch), int(last_stride)
  if with_host_allocator == "1":  # the settings themselves: no JAX backend runs here
    host_allocator.apply_settings()
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  image_size = tuple(int(v) for v in size.split("x"))
  images, labels = pk_batch(batch, image_size=image_size)
  if model == "fastreid" and kind == "train":
    call = make_fastreid_train_step(images, labels, NUM_CLASSES, last_stride)
  elif model == "fastreid":
    call = make_fastreid_extractor(images, last_stride)
  elif kind == "train":
    call = make_train_step(images, labels, NUM_CLASSES, dtype, last_stride=last_stride)
  else:
    call = make_extractor(images, dtype, last_stride=last_stride)
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() == "step":
      call()
      print("done", flush=True)
    elif line.strip() == "profile":
      print("profile " + json.dumps(op_self_times(call)), flush=True)


def op_self_times(call: Callable[[], object]) -> dict[str, float]:
  """{op name: self CPU seconds} of one `call()` under `torch.profiler`."""
  from torch.profiler import ProfilerActivity, profile

  with profile(activities=[ProfilerActivity.CPU]) as prof:
    call()
  return {e.key: e.self_cpu_time_total * 1e-6 for e in prof.key_averages()}


if __name__ == "__main__":
  _worker_main(sys.argv[1:])
