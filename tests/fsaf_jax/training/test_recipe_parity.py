"""Recipe parity: 3 BoT training steps in JAX (the project's train step) and in PyTorch.

The reference is independent of the library: the tests' PyTorch ResNet-IBN-a
(`tests/reference/torch_resnet_ibn.py`) with BoT's BNNeck head, BoT's losses and lr
schedule written in PyTorch (`tests/reference/torch_bot.py`) and
`torch.optim.Adam(lr=3.5e-4, weight_decay=5e-4)`, all with BoT's values written here,
not read from the config. The JAX side is what `train.py` runs: `configs/bot_r50_ibn_a.py`
(BoT: R50-IBN-a, last stride 1, BNNeck, CE + LS 0.1, triplet 0.3, Adam with coupled decay,
per-epoch warmup staircase) with its centre loss off (BoT's softmax_triplet variant);
`create_model`, `create_train_state` (backbone from a file written by
`fsaf_jax.convert_ibn` from the PyTorch net) and `make_train_step` on the 4 simulated
devices. Both start from the same weights and see the same 3 P x K batches of uint8
images; `steps_per_epoch = 1`, so every step is a new epoch with its own lr (BoT's
warmup: 3.815e-5, 7.28e-5, 1.0745e-4).

Decisions (measured on this problem, float32 JAX on CPU):
* Layout: `configs/tiny.py`'s depths and widths (stem 8, widths 8..64, 2 blocks per
  stage), 64x32 input. From a random initialisation the full ResNet-50 is too
  ill-conditioned for a 3-step comparison in float32: with the same images and
  tolerances its parameters after 3 steps differ from the float64 reference by 0.16
  LR_TOTAL (median; 50% of the update in L2 norm), and its float32 gradients, PyTorch's
  as well as JAX's, differ from float64 ones by ~2% (median over the tensors; 128x64,
  piecewise-constant images). The tiny layout's gradients agree to 1e-5.
* The PyTorch reference runs in float64 (from the same float32 initial values), so the
  tolerances below measure the float32 error of the JAX side alone (a float32 PyTorch
  run also passes them).
"""

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch", reason="PyTorch is not installed (CPU build: see README)")

from configs import bot_r50_ibn_a, tiny  # noqa: E402
from fsaf_jax import convert_ibn  # noqa: E402
from fsaf_jax.core.mesh import make_mesh  # noqa: E402
from fsaf_jax.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from fsaf_jax.models.registry import create_model  # noqa: E402
from fsaf_jax.training.train_state import create_train_state  # noqa: E402
from fsaf_jax.training.train_step import make_train_step  # noqa: E402
from tests.reference import flax_from_torch, torch_bot  # noqa: E402
from tests.reference.torch_resnet_ibn import ResNetIBN  # noqa: E402

IMAGE_SIZE = (64, 32)  # (H, W)
P, K = 4, 4
NUM_CLASSES = 10
NUM_STEPS = 3
SEED = 0

# BoT's recipe (reid-strong-baseline, softmax_triplet), independent of the configs.
BOT_BASE_LR = 3.5e-4
BOT_WEIGHT_DECAY = 5e-4  # WEIGHT_DECAY = WEIGHT_DECAY_BIAS: every parameter
BOT_LABEL_SMOOTHING = 0.1
BOT_MARGIN = 0.3
BOT_MILESTONES = (40, 70)
BOT_WARMUP_EPOCHS, BOT_WARMUP_FACTOR, BOT_GAMMA = 10, 0.01, 0.1
BN_MOMENTUM = 0.1  # PyTorch convention (Flax: 0.9)


def bot_lr(epoch: int) -> float:
  """BoT's lr for 0-based epoch `epoch`: its trainer runs the epoch at `last_epoch = epoch + 1`."""
  last_epoch = epoch + 1
  alpha = last_epoch / BOT_WARMUP_EPOCHS
  warmup = BOT_WARMUP_FACTOR * (1 - alpha) + alpha if last_epoch < BOT_WARMUP_EPOCHS else 1.0
  return BOT_BASE_LR * warmup * BOT_GAMMA ** sum(m <= last_epoch for m in BOT_MILESTONES)


LR_TOTAL = sum(bot_lr(s) for s in range(NUM_STEPS))  # the unit of parameter differences


def _config():
  config = bot_r50_ibn_a.get_config()
  config.loss.center_weight = 0.0  # BoT's softmax_triplet variant
  layout = tiny.get_config().model
  for field in ("stage_sizes", "stem_width", "widths"):
    config.model[field] = layout[field]
  config.input.image_size = IMAGE_SIZE
  config.input.num_identities, config.input.num_instances = P, K
  config.train.steps_per_epoch = 1
  return config


def _upsample8(coarse: np.ndarray) -> np.ndarray:
  """Bilinear x8 upsampling [N, h + 1, w + 1, C] -> [N, 8h, 8w, C] (corner-aligned)."""
  n, h1, w1, _ = coarse.shape
  y, x = np.arange(8 * (h1 - 1)) / 8, np.arange(8 * (w1 - 1)) / 8
  y0, x0 = y.astype(int), x.astype(int)
  fy, fx = (y - y0)[None, :, None, None], (x - x0)[None, None, :, None]
  rows = (1 - fy) * coarse[:, y0] + fy * coarse[:, y0 + 1]
  return (1 - fx) * rows[:, :, x0] + fx * rows[:, :, x0 + 1]


def _batches() -> list[dict[str, np.ndarray]]:
  """P x K batches: uint8 images [16, 64, 32, 3] and int32 labels (4 of the 10 classes).

  An image is a smooth pattern (an 8 x 4 grid of colours, bilinearly upsampled; an
  identity's K images share it up to perturbations) plus per-pixel noise of +-4 grey
  levels. Flat regions are avoided on purpose: piecewise-constant images make exact
  ties in the max-pool and degenerate BatchNorm inputs, which amplify float32
  rounding (measured: JAX's step-0 gradients then differed from float64 PyTorch by up to
  0.7% for some seeds, against 1e-5 with these images).
  """
  rng = np.random.default_rng(SEED)
  h, w = IMAGE_SIZE
  batches = []
  for _ in range(NUM_STEPS):
    ids = rng.permutation(NUM_CLASSES)[:P]
    pattern = rng.uniform(0, 255, (P, 1, h // 8 + 1, w // 8 + 1, 3))
    coarse = pattern + rng.normal(0, 20, (P, K, h // 8 + 1, w // 8 + 1, 3))
    images = _upsample8(coarse.reshape(P * K, h // 8 + 1, w // 8 + 1, 3))
    images = images + rng.uniform(-4, 4, images.shape)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    batches.append({"image": images, "label": np.repeat(ids, K).astype(np.int32)})
  return batches


def _torch_images(images: np.ndarray) -> torch.Tensor:
  """uint8 NHWC -> float64 NCHW of the float32 `(x / 255 - mean) / std` of `normalize_images`."""
  x = images.astype(np.float32) / np.float32(255.0)
  x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()


def _torch_key(path: tuple[str, ...]) -> str:
  """Key in the PyTorch net's state_dict of a Flax variable path (('params', ...))."""
  if path[1] == "backbone":
    return "base." + convert_ibn.torch_key(path)
  head = {
    ("params", "head", "bnneck", "scale"): "bottleneck.weight",
    ("batch_stats", "head", "bnneck", "mean"): "bottleneck.running_mean",
    ("batch_stats", "head", "bnneck", "var"): "bottleneck.running_var",
    ("params", "head", "classifier", "kernel"): "classifier.weight",
  }
  return head[path]


def _flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return value.T if value.ndim == 2 else value  # Linear (out, in) -> Dense (in, out)


def _torch_variables(net, paths) -> dict[tuple[str, ...], np.ndarray]:
  state = net.state_dict()
  return {p: _flax_layout(state[_torch_key(p)].double().numpy().copy()) for p in paths}


def _flat_host(variables) -> dict[tuple[str, ...], np.ndarray]:
  return {
    p: np.asarray(v) for p, v in traverse_util.flatten_dict(jax.device_get(variables)).items()
  }


@dataclasses.dataclass
class Run:
  """Both runs, variables as {Flax path: numpy array} (PyTorch in Flax layout)."""

  jax_init: dict
  torch_init: dict
  jax_final: dict
  torch_final: dict
  jax_metrics: list  # per step {'loss', 'ce', 'triplet', 'lr', ...}
  torch_metrics: list  # per step {'loss', 'ce', 'triplet'}
  torch_lrs: list
  bn_count: dict  # Flax BatchNorm module path -> elements per channel of its batch


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
  tmp_path = tmp_path_factory.mktemp("recipe_parity")
  config = _config()
  mc = config.model

  # PyTorch: ResNet-IBN-a (official conv init, random norms standing in for ImageNet
  # weights) + BNNeck, float32 values, then float64.
  torch.manual_seed(SEED)
  backbone = ResNetIBN(
    layers=tuple(mc.stage_sizes),
    widths=tuple(mc.widths),
    stem_width=mc.stem_width,
    ibn_cfg=tuple("a" if s + 2 in mc.ibn_stages else None for s in range(4)),
    last_stride=mc.last_stride,
  )
  flax_from_torch.randomize_norms_(backbone, seed=SEED + 1)
  torch.save(backbone.state_dict(), tmp_path / "backbone.pth")
  net = torch_bot.BNNeckBaseline(backbone, NUM_CLASSES).double()
  optimizer = torch.optim.Adam(
    [p for p in net.parameters() if p.requires_grad],
    lr=BOT_BASE_LR,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=BOT_WEIGHT_DECAY,
  )
  scheduler = torch_bot.WarmupMultiStepLR(
    optimizer, BOT_MILESTONES, BOT_GAMMA, BOT_WARMUP_FACTOR, BOT_WARMUP_EPOCHS
  )

  # JAX: the converter, the train state, the train step.
  conversion = convert_ibn.convert_file(
    tmp_path / "backbone.pth", tmp_path / "backbone.msgpack", config
  )
  assert conversion.left_at_init["missing from the checkpoint"] == [], conversion.report()
  assert sorted(sum(conversion.unused.values(), [])) == ["fc.bias", "fc.weight"]
  config.init.pretrained = str(tmp_path / "backbone.msgpack")
  model = create_model(config.model, NUM_CLASSES)
  mesh = make_mesh()
  state = create_train_state(
    config, model, jax.random.key(SEED), NUM_CLASSES, IMAGE_SIZE, mesh=mesh
  )
  # The head starts from the PyTorch initialisation (BoT's: BN scale 1, N(0, 0.001)).
  flat = _flat_host(state.variables)
  paths = sorted(flat)
  flat.update(
    {p: v.astype(np.float32) for p, v in _torch_variables(net, paths).items() if p[1] == "head"}
  )
  variables = traverse_util.unflatten_dict(flat)
  state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  jax_init, torch_init = dict(flat), _torch_variables(net, paths)
  step = make_train_step(model, config.loss, mesh)

  bn_modules = {_torch_key(p).rsplit(".", 1)[0]: p[:-1] for p in paths if p[-1] == "mean"}
  bn_count = {}

  def count_hook(name):
    def hook(module, inputs, output):
      bn_count[bn_modules[name]] = inputs[0].numel() // inputs[0].shape[1]

    return hook

  hooks = [
    m.register_forward_hook(count_hook(name))
    for name, m in net.named_modules()
    if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)
  ]
  jax_metrics, torch_metrics, torch_lrs = [], [], []
  for batch in _batches():
    state, metrics = step(state, batch)
    jax_metrics.append({k: float(v) for k, v in metrics.items()})
    torch_lrs.append(torch_bot.run_epoch_start(scheduler))
    torch_metrics.append(
      torch_bot.train_step(
        net,
        optimizer,
        _torch_images(batch["image"]),
        torch.from_numpy(batch["label"]).long(),
        label_smoothing=BOT_LABEL_SMOOTHING,
        margin=BOT_MARGIN,
      )
    )
  for hook in hooks:
    hook.remove()
  assert sorted(bn_count) == sorted(bn_modules.values())
  assert not net.bottleneck.bias.any()  # the BNNeck shift stayed frozen at 0 (none in Flax)
  return Run(
    jax_init=jax_init,
    torch_init=torch_init,
    jax_final=_flat_host(state.variables),
    torch_final=_torch_variables(net, paths),
    jax_metrics=jax_metrics,
    torch_metrics=torch_metrics,
    torch_lrs=torch_lrs,
    bn_count=bn_count,
  )


def test_same_start(run):
  """Every Flax variable has a PyTorch counterpart, with the same initial value."""
  assert sorted(run.jax_init) == sorted(run.torch_init)
  # 29 convs, 35 norms x (scale, bias), 29 BatchNorms x (mean, var), the head's 4.
  assert len(run.jax_init) == 161
  for path, value in run.jax_init.items():
    np.testing.assert_array_equal(value, run.torch_init[path], err_msg="/".join(path))


def test_lr_is_bots_per_epoch_staircase(run):
  """Each step is a new epoch: lr = BoT's `WarmupMultiStepLR` at `last_epoch = epoch + 1`."""
  expected = [bot_lr(s) for s in range(NUM_STEPS)]
  np.testing.assert_allclose(expected, [3.815e-5, 7.28e-5, 1.0745e-4], rtol=1e-12)
  np.testing.assert_allclose(run.torch_lrs, expected, rtol=1e-12)  # the reference itself
  np.testing.assert_allclose([m["lr"] for m in run.jax_metrics], expected, rtol=1e-6)  # float32


def test_losses_agree_at_every_step(run):
  """Loss and its parts, before each step's update.

  Step 0 sees identical weights, so only float32 rounding of the forward pass differs;
  later steps also see the (tiny) parameter differences of the earlier updates.
  Measured over seeds 0-4: at most 3e-7 (CE) and 7e-6 (triplet, total) absolute, on a
  CE of ~2.3, a triplet loss of ~1.2 and a total of ~3.4. The tolerances, 5e-6 (CE) and
  2e-5 relative (triplet, total), keep what the recipe settles visible: label smoothing
  0 instead of 0.1 moves CE by 1.1e-4 at these near-uniform initial logits; triplet
  margin 0.5 instead of 0.3 moves the triplet loss by 0.2 (every hinge is active).
  """
  for s in range(NUM_STEPS):
    jax_m, torch_m = run.jax_metrics[s], run.torch_metrics[s]
    np.testing.assert_allclose(jax_m["ce"], torch_m["ce"], rtol=0, atol=5e-6, err_msg=f"ce {s}")
    for key in ("triplet", "loss"):
      np.testing.assert_allclose(jax_m[key], torch_m[key], rtol=2e-5, err_msg=f"{key} {s}")


def _l2(tree_a, tree_b, paths) -> float:
  return float(np.sqrt(sum(np.sum(np.square(tree_a[p] - tree_b[p])) for p in paths)))


def test_parameters_agree_after_three_steps(run):
  """Parameters after 3 steps, compared in units of the summed lr (`LR_TOTAL`).

  Adam moves every entry by about the lr per step whatever its gradient's scale, so
  the natural unit of a difference is the lr. Entries whose effective gradient
  (gradient + weight decay) is at float32 noise level take a +-lr step whose sign is
  noise: such an entry differs by twice that step's lr (0.35 LR_TOTAL in the first
  step, 0.98 in the third), and the difference feeds into the later gradients. Measured
  over seeds 0-4, of the 225,128 entries: median at most 3e-4, 99th percentile 7e-3,
  max 0.34 LR_TOTAL (one or two noise-signed entries), at most 6 entries above 0.1;
  relative L2 norm of the difference of the updates at most 0.33%.

  The checks: median <= 0.005 and 99th percentile <= 0.05 LR_TOTAL (every entry but
  the noise-signed ones is held to a few percent of a step), at most 22 entries (1e-4)
  beyond 0.5 LR_TOTAL (the noise-signed ones), and the update difference <= 2% in
  relative L2 norm. They fail for (tried by hand, seed 0): label smoothing 0 (99th
  percentile 0.11, L2 4.9%); no weight decay, or none on the norm layers (190-270
  entries, those whose gradient is below wd |w|, step the other way: > 0.5 LR_TOTAL;
  L2 6-8%); fast-reid's per-step warmup instead of BoT's staircase (median 0.3). A
  triplet margin of 0.5 leaves the gradients unchanged here (every anchor's hinge is
  active with either margin): the loss test catches it.
  """
  paths = [p for p in sorted(run.jax_final) if p[0] == "params"]
  diff = [np.abs(run.jax_final[p] - run.torch_final[p]).ravel() for p in paths]
  diff = np.concatenate(diff) / LR_TOTAL
  median, p99 = np.quantile(diff, [0.5, 0.99])
  num_far = int(np.sum(diff > 0.5))
  update = _l2(run.torch_final, run.torch_init, paths)
  rel_l2 = _l2(run.jax_final, run.torch_final, paths) / update
  summary = (
    f"median {median:.2e}, 99% {p99:.2e}, max {diff.max():.3f} LR_TOTAL, {num_far} entries "
    f"> 0.5 of {diff.size}, relative L2 {rel_l2:.2e}"
  )
  assert median <= 0.005 and p99 <= 0.05, summary
  assert num_far <= 1e-4 * diff.size, summary
  assert rel_l2 <= 0.02, summary
  # Not vacuous: the entries moved by about the lr per step (a few reverse direction).
  moved = np.concatenate([np.abs(run.torch_final[p] - run.torch_init[p]).ravel() for p in paths])
  assert np.median(moved) / LR_TOTAL > 0.3, np.median(moved) / LR_TOTAL
  for p in paths:
    assert np.max(np.abs(run.torch_final[p] - run.torch_init[p])) > 0.3 * LR_TOTAL, p


def test_batchnorm_statistics_agree(run):
  """Running means directly; running variances with PyTorch's unbiased batch variance.

  Both update `r <- (1 - 0.1) r + 0.1 * batch statistic`, but PyTorch's variance is
  unbiased, n / (n - 1) times Flax's (n = elements per channel: batch x H x W, or the
  batch for the BNNeck). After 3 steps from `v0`, with `c = 0.9 ** 3`:
  `flax = c v0 + (torch - c v0) (n - 1) / n`.

  Tolerance, per BatchNorm: 1e-3 x the RMS of what the 3 batches added (`r - c r0`),
  as the statistics are of activations computed in float32 (measured over seeds 0-4:
  at most 6e-5 of it). Without the factor the variances would be off by
  1 / (n - 1) of that: 6.7% in the BNNeck (n = 16), 0.8% in Conv4_x / Conv5_x
  (n = 128); the last assertion shows it is seen there (in earlier stages, n >= 512,
  it is near the tolerance).
  """
  c = (1 - BN_MOMENTUM) ** NUM_STEPS
  bnneck = ("batch_stats", "head", "bnneck")
  assert run.bn_count[bnneck] == P * K
  assert run.bn_count[("batch_stats", "backbone", "layer4_1", "bn3")] == P * K * 4 * 2

  def error(actual, expected, init):
    """max |actual - expected| in units of the RMS of what the batches added."""
    added = expected - c * init
    return np.max(np.abs(actual - expected)) / np.sqrt(np.mean(np.square(added)))

  for module, n in run.bn_count.items():
    name = "/".join(module)
    mean, var = module + ("mean",), module + ("var",)
    mean_error = error(run.jax_final[mean], run.torch_final[mean], run.torch_init[mean])
    v0, torch_var = run.torch_init[var], run.torch_final[var]
    unbiased_to_biased = c * v0 + (torch_var - c * v0) * (n - 1) / n
    var_error = error(run.jax_final[var], unbiased_to_biased, v0)
    assert mean_error <= 1e-3 and var_error <= 1e-3, (name, mean_error, var_error)
    if n <= 128:  # the factor's effect, 1 / (n - 1), is well above the tolerance
      assert error(run.jax_final[var], torch_var, v0) > 3e-3, name
