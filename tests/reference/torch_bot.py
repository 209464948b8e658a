"""PyTorch BoT recipe (test-only reference): BNNeck head, BoT's losses and lr schedule.

Written from the description of BoT (Luo et al. 2019, "Bag of Tricks and A Strong
Baseline for Deep Person Re-identification", code reid-strong-baseline):

  * `BNNeckBaseline`: backbone (`tests.reference.torch_resnet_ibn.ResNetIBN`, its
    ImageNet `fc` dropped), global average pooling -> `feat` (triplet loss),
    BatchNorm1d with its shift frozen at 0 (`requires_grad=False`) -> `bn_feat`,
    bias-free linear classifier initialised normal(0, 0.001) -> logits (CE). The
    BatchNorm1d starts at scale 1, shift 0.
  * `label_smoothed_cross_entropy`: targets `(1 - eps) * onehot + eps / num_classes`,
    loss `mean_batch(sum_classes(-targets * log_softmax(logits)))`.
  * `batch_hard_triplet_loss`: Euclidean distances from `|a|^2 + |b|^2 - 2 a.b`,
    clamped at 1e-12 before the square root; for each anchor the farthest sample of its
    identity and the nearest of another; `MarginRankingLoss(margin)` with target 1,
    i.e. `mean(max(0, d_ap - d_an + margin))`.
  * `WarmupMultiStepLR`: `base_lr * warmup * gamma ** #{m in milestones: m <= last_epoch}`,
    `warmup = f * (1 - a) + a` with `a = last_epoch / warmup_epochs` while
    `last_epoch < warmup_epochs` (else 1). BoT's trainer calls `step()` at the start of
    every epoch, after the constructor's own `step()`, so 0-based epoch `e` runs with
    `last_epoch = e + 1` (`run_epoch_start`).

The optimiser is plain `torch.optim.Adam(params, lr, weight_decay=wd)` (coupled L2
decay on every trainable parameter, norms included, as BoT with
`WEIGHT_DECAY_BIAS = WEIGHT_DECAY`).

This file is only imported by tests; the library never imports torch.
"""

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tests.reference.torch_resnet_ibn import EXPANSION, ResNetIBN


class BNNeckBaseline(nn.Module):
  """BoT's baseline network: backbone + GAP + BNNeck + classifier.

  Args:
    backbone: a `ResNetIBN` (its `fc` is replaced by nothing: only `features` is used).
    num_classes: training identities.
  """

  def __init__(self, backbone: ResNetIBN, num_classes: int):
    super().__init__()
    backbone.fc = nn.Identity()  # the ImageNet classifier is not part of the ReID net
    self.base = backbone
    in_planes = backbone.layer4[-1].conv3.out_channels
    assert in_planes == backbone.layer4[-1].conv1.out_channels * EXPANSION
    self.gap = nn.AdaptiveAvgPool2d(1)
    self.bottleneck = nn.BatchNorm1d(in_planes)
    self.bottleneck.bias.requires_grad_(False)  # BNNeck: shift frozen at 0
    self.classifier = nn.Linear(in_planes, num_classes, bias=False)
    with torch.no_grad():
      self.bottleneck.weight.fill_(1.0)
      self.bottleneck.bias.zero_()
      self.classifier.weight.normal_(0.0, 0.001)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised images [N, 3, H, W] -> 'feat' [N, C] (pre-BN), 'bn_feat', 'logits'."""
    feat = torch.flatten(self.gap(self.base.features(x)["layer4"]), 1)
    bn_feat = self.bottleneck(feat)
    return {"feat": feat, "bn_feat": bn_feat, "logits": self.classifier(bn_feat)}


def label_smoothed_cross_entropy(
  logits: torch.Tensor, labels: torch.Tensor, epsilon: float
) -> torch.Tensor:
  """BoT's `CrossEntropyLabelSmooth`: logits [N, K], int labels [N] -> scalar."""
  num_classes = logits.shape[1]
  log_probs = F.log_softmax(logits, dim=1)
  onehot = torch.zeros_like(log_probs).scatter_(1, labels[:, None], 1.0)
  targets = (1.0 - epsilon) * onehot + epsilon / num_classes
  return (-targets * log_probs).sum(dim=1).mean()


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
  """[N, C] -> [N, N] `sqrt(clamp(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, min=1e-12))`."""
  sq = (x * x).sum(dim=1, keepdim=True)
  d2 = sq + sq.t() - 2.0 * (x @ x.t())
  return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(
  feat: torch.Tensor, labels: torch.Tensor, margin: float
) -> torch.Tensor:
  """Batch-hard triplet loss with a hinge margin (every anchor needs a positive).

  Args:
    feat: [N, C] features (the pre-BNNeck pooled feature).
    labels: int [N]; every identity occurs at least twice (P x K batches, K >= 2).
    margin: the hinge margin (BoT: 0.3).

  Returns:
    Scalar: `mean_i max(0, d_ap[i] - d_an[i] + margin)`.
  """
  dist = euclidean_distances(feat)
  same = labels[:, None] == labels[None, :]
  # Hardest positive: the farthest sample of the same identity (the anchor itself, at
  # distance 1e-6, never wins with K >= 2). Hardest negative: nearest other identity.
  d_ap = torch.where(same, dist, torch.zeros_like(dist)).max(dim=1).values
  d_an = torch.where(same, torch.full_like(dist, float("inf")), dist).min(dim=1).values
  return F.margin_ranking_loss(d_an, d_ap, torch.ones_like(d_an), margin=margin)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
  """BoT's per-epoch warmup multi-step schedule (see the module docstring).

  Args:
    optimizer: the optimiser whose groups' lr it sets (their initial lr is the base).
    milestones: epochs (in `last_epoch` units) at which the lr is multiplied by gamma.
    gamma: decay factor.
    warmup_factor: lr factor at `last_epoch = 0`.
    warmup_epochs: length of the linear warmup.
  """

  def __init__(
    self,
    optimizer: torch.optim.Optimizer,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_factor: float = 0.01,
    warmup_epochs: int = 10,
  ):
    self.milestones = tuple(milestones)
    self.gamma = gamma
    self.warmup_factor = warmup_factor
    self.warmup_epochs = warmup_epochs
    super().__init__(optimizer)

  def factor(self, last_epoch: int) -> float:
    """The lr multiplier at `last_epoch`."""
    warmup = 1.0
    if last_epoch < self.warmup_epochs:
      alpha = last_epoch / self.warmup_epochs
      warmup = self.warmup_factor * (1.0 - alpha) + alpha
    decays = sum(1 for m in self.milestones if m <= last_epoch)
    return warmup * self.gamma**decays

  def get_lr(self) -> list[float]:
    return [base * self.factor(self.last_epoch) for base in self.base_lrs]


def run_epoch_start(scheduler: WarmupMultiStepLR) -> float:
  """What BoT's trainer does at every epoch start: `scheduler.step()`; returns the lr."""
  with warnings.catch_warnings():
    # BoT steps the scheduler before the epoch's first optimizer.step(), on purpose.
    warnings.filterwarnings(
      "ignore", message="Detected call of `lr_scheduler.step", category=UserWarning
    )
    scheduler.step()
  return scheduler.optimizer.param_groups[0]["lr"]


def train_step(
  net: BNNeckBaseline,
  optimizer: torch.optim.Optimizer,
  images: torch.Tensor,
  labels: torch.Tensor,
  *,
  label_smoothing: float,
  margin: float,
  ce_weight: float = 1.0,
  triplet_weight: float = 1.0,
) -> dict[str, float]:
  """One BoT iteration in train mode: forward, `ce_weight * CE + triplet_weight * triplet`,
  backward, `optimizer.step()`.

  Args:
    net: the network (put in train mode here).
    optimizer: e.g. `torch.optim.Adam(net.parameters(), lr, weight_decay=5e-4)`.
    images: normalised [N, 3, H, W] float32.
    labels: int64 [N].
    label_smoothing, margin, ce_weight, triplet_weight: the loss settings.

  Returns:
    {'loss', 'ce', 'triplet'} as floats (computed before the update).
  """
  net.train()
  optimizer.zero_grad(set_to_none=True)
  out = net(images)
  ce = label_smoothed_cross_entropy(out["logits"], labels, label_smoothing)
  triplet = batch_hard_triplet_loss(out["feat"], labels, margin)
  loss = ce_weight * ce + triplet_weight * triplet
  loss.backward()
  optimizer.step()
  return {"loss": loss.item(), "ce": ce.item(), "triplet": triplet.item()}
