"""convert_ibn: PyTorch ResNet(-IBN-a) checkpoints -> the Flax pretrained file.

Reference: the official ResNet-IBN-a in PyTorch (`tests/reference/torch_resnet_ibn.py`)
with random weights, random norm affine parameters and random BN running statistics;
its eval-mode stage outputs must match the converted Flax model's.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch", reason="PyTorch is not installed (CPU build: see README)")

from configs import baseline, fsaf_market, tiny  # noqa: E402
from fsaf_jax import convert_ibn  # noqa: E402
from fsaf_jax.convert_ibn import ConversionError  # noqa: E402
from fsaf_jax.models import pretrained, registry  # noqa: E402
from tests.reference import ceiling  # noqa: E402
from tests.reference import torch_resnet_ibn as ref  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = (
  ("stem", "stem"),
  ("conv2", "layer1"),
  ("conv3", "layer2"),
  ("conv4", "layer3"),
  ("conv5", "layer4"),
)


# --- Helpers. ---------------------------------------------------------------------------


def randomize_(net: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.nn.Module:
  """Random norm affine params; BN running stats from a batch, then randomly perturbed.

  Convs keep their (random) official init. Statistics taken from a batch keep a deep
  network's activations O(1), so every layer matters to the output; the perturbation
  (mean + 0.2 std N(0,1), var * U(0.5, 2)) makes them differ from what eval-mode
  batch statistics would give.
  """
  gen = torch.Generator().manual_seed(seed)
  norms = [
    m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.InstanceNorm2d)
  ]
  bns = [m for m in norms if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in norms:
      m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
      m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    for m in bns:
      m.momentum = 1.0  # running stats := this batch's statistics
    net.train()
    net.features(x)
    for m in bns:
      m.momentum = 0.1
      std = m.running_var.sqrt()
      m.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=gen))
      m.running_var.mul_(0.5 + 1.5 * torch.rand(std.shape, generator=gen))
  return net.eval()


def torch_stages(net: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
  """Eval-mode stage outputs of NHWC images, as NHWC arrays keyed like the Flax model."""
  net.eval()
  with torch.no_grad():
    out = net.features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  return {key: out[name].numpy().transpose(0, 2, 3, 1) for key, name in STAGES}


def flax_stages(model_config, pretrained_path: str, x: np.ndarray) -> dict[str, np.ndarray]:
  """Eval-mode stage outputs of the model built from `model_config` with the file loaded.

  The fresh variables are ones (not a random init: nothing but the file's entries may
  matter to the backbone, and this skips compiling `init`).
  """
  model = registry.create_model(model_config, num_classes=3)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.asarray(x))
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  variables, report = pretrained.apply_pretrained(
    fresh, pretrained.load_pretrained(pretrained_path)
  )
  assert all(p.startswith(("params/head/", "batch_stats/head/")) for p in report.left_at_init)
  forward = jax.jit(lambda v, x: {k: model.apply(v, x, train=False)[k] for k, _ in STAGES})
  return jax.tree.map(np.asarray, forward(variables, jnp.asarray(x)))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|."""
  scale = float(np.max(np.abs(expected)))
  assert scale > 0, "degenerate reference output"
  return float(np.max(np.abs(actual - expected))) / scale


def plain_layout(config, last_stride: int):
  """The config's model without MHSA / ECA / fusion (what an ImageNet ResNet can fill)."""
  mc = config.model
  mc.mhsa_stages, mc.eca_placement, mc.fusion, mc.last_stride = (), "none", "none", last_stride
  return config


def wrap(state_dict, how: str):
  if how == "bare":
    return state_dict
  if how == "module":
    return {f"module.{k}": v for k, v in state_dict.items()}
  if how == "state_dict":
    return {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}
  if how == "model":  # fast-reid / detectron2 style
    return {"model": state_dict, "iteration": 10}
  raise ValueError(how)


def run_cli(*args: str) -> subprocess.CompletedProcess:
  """`python -m fsaf_jax.convert_ibn ARGS` from the repository root."""
  return ceiling.run(
    [sys.executable, "-m", "fsaf_jax.convert_ibn", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    ceiling=ceiling.SHORT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


def flat(variables) -> dict[tuple[str, ...], np.ndarray]:
  return traverse_util.flatten_dict(variables)


# --- Tiny: the whole logic, fast. ----------------------------------------------------------


TINY_SIZE = (64, 32)


@pytest.fixture(scope="module")
def tiny_net():
  torch.manual_seed(0)
  x = torch.randn(4, 3, *TINY_SIZE)
  return randomize_(ref.resnet_ibn_a_tiny(last_stride=2), x, seed=1)


@pytest.fixture(scope="module")
def tiny_file(tiny_net, tmp_path_factory):
  """The tiny checkpoint (bare state_dict, with num_batches_tracked) and its conversion."""
  directory = tmp_path_factory.mktemp("tiny")
  src, dst = str(directory / "tiny.pth"), str(directory / "tiny.msgpack")
  torch.save(tiny_net.state_dict(), src)
  conversion = convert_ibn.convert_file(src, dst, plain_layout(tiny.get_config(), 2))
  return src, dst, conversion


@pytest.mark.parametrize("last_stride", [2, 1])
def test_tiny_conversion_matches_torch(tiny_net, tiny_file, last_stride):
  _, dst, conversion = tiny_file
  assert conversion.unused == {
    "replaced by MHSA": [],
    "ImageNet classifier": ["fc.weight", "fc.bias"],
    "unexpected": [],
  }
  assert conversion.left_at_init["missing from the checkpoint"] == []
  net = ref.resnet_ibn_a_tiny(last_stride=last_stride)  # same weights, other stride
  net.load_state_dict(tiny_net.state_dict())
  x = np.random.default_rng(last_stride).normal(size=(2, *TINY_SIZE, 3)).astype(np.float32)
  expected = torch_stages(net, x)
  actual = flax_stages(plain_layout(tiny.get_config(), last_stride).model, dst, x)
  assert (
    actual["conv5"].shape == expected["conv5"].shape == (2, 4 // last_stride, 2 // last_stride, 256)
  )
  for key, _ in STAGES:
    assert relative_error(actual[key], expected[key]) <= 1e-4, key


@pytest.mark.parametrize("how", ["module", "state_dict", "model"])
def test_wrappers_and_prefix_convert_to_the_same_entries(tiny_net, tiny_file, tmp_path, how):
  _, reference_dst, reference = tiny_file
  src = str(tmp_path / "wrapped.pth")
  torch.save(wrap(tiny_net.state_dict(), how), src)
  conversion = convert_ibn.convert_file(src, tmp_path / "out", plain_layout(tiny.get_config(), 2))
  assert conversion.unused == reference.unused  # num_batches_tracked: ignored, not unused
  expected = flat(pretrained.load_pretrained(reference_dst)["params"])
  actual = flat(pretrained.load_pretrained(tmp_path / "out")["params"])
  assert actual.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=str(key))


def test_entries_are_transposed_and_renamed(tiny_net, tiny_file):
  """Spot checks of the table against the PyTorch tensors, by hand."""
  _, dst, _ = tiny_file
  sd = {k: v.numpy() for k, v in tiny_net.state_dict().items()}
  loaded = pretrained.load_pretrained(dst)
  params, stats = loaded["params"]["backbone"], loaded["batch_stats"]["backbone"]
  w = sd["layer2.0.conv2.weight"]  # O, I, H, W
  k = params["layer2_0"]["conv2"]["kernel"]  # H, W, I, O
  assert k.shape == (3, 3, w.shape[1], w.shape[0])
  for o, i, h, x in [(0, 0, 0, 0), (3, 5, 2, 1), (w.shape[0] - 1, w.shape[1] - 1, 1, 2)]:
    assert k[h, x, i, o] == w[o, i, h, x]
  np.testing.assert_array_equal(
    params["layer1_1"]["bn1"]["IN"]["scale"], sd["layer1.1.bn1.IN.weight"]
  )
  np.testing.assert_array_equal(params["layer3_0"]["bn1"]["BN"]["bias"], sd["layer3.0.bn1.BN.bias"])
  np.testing.assert_array_equal(
    stats["layer3_0"]["bn1"]["BN"]["var"], sd["layer3.0.bn1.BN.running_var"]
  )
  np.testing.assert_array_equal(
    stats["layer4_0"]["downsample_bn"]["mean"], sd["layer4.0.downsample.1.running_mean"]
  )
  np.testing.assert_array_equal(
    params["layer4_0"]["downsample_conv"]["kernel"][0, 0],
    sd["layer4.0.downsample.0.weight"][:, :, 0, 0].T,
  )
  np.testing.assert_array_equal(params["bn1"]["scale"], sd["bn1.weight"])
  assert "fc" not in params and "head" not in loaded["params"]
  metadata = loaded["metadata"]
  assert metadata["layout"]["mhsa_stages"] == [] and metadata["layout"]["widths"] == [8, 16, 32, 64]
  assert metadata["unused_source_keys"] == {"ImageNet classifier": ["fc.weight", "fc.bias"]}


def test_tiny_full_layout_report(tiny_net, tmp_path):
  src = str(tmp_path / "tiny.pth")
  torch.save(tiny_net.state_dict(), src)
  conversion = convert_ibn.convert_file(src, tmp_path / "out", tiny.get_config())
  conv2 = [f"layer{s}.{i}.conv2.weight" for s in (3, 4) for i in (0, 1)]
  assert conversion.unused["replaced by MHSA"] == conv2
  assert conversion.unused["unexpected"] == []
  new = conversion.left_at_init["no ImageNet counterpart"]
  assert (
    "params/backbone/layer3_1/mhsa/rel_w" in new and "params/backbone/eca_stem/conv/kernel" in new
  )
  assert conversion.left_at_init["missing from the checkpoint"] == []


def test_cli_writes_the_file_and_prints_the_report(tiny_net, tmp_path):
  src, dst = str(tmp_path / "tiny.pth"), str(tmp_path / "tiny.msgpack")
  torch.save(wrap(tiny_net.state_dict(), "state_dict"), src)
  result = run_cli(src, dst, "--config=configs/tiny.py")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "checkpoint tensors unused (replaced by MHSA): 4" in out
  assert "layer3.{0..1}.conv2.weight" in out and "layer4.{0..1}.conv2.weight" in out
  assert "checkpoint tensors unused (ImageNet classifier): 2" in out and "fc.{bias,weight}" in out
  assert (
    "params/backbone/layer4_{0..1}/mhsa/{key/kernel,query/kernel,rel_h,rel_w,value/kernel}" in out
  )
  assert "params/head/classifier/kernel" in out
  assert "num_batches_tracked" not in out
  assert pretrained.load_pretrained(dst)["metadata"]["layout"]["mhsa_stages"] == [4, 5]


def test_cli_reports_a_bad_file_without_a_traceback(tmp_path):
  src = tmp_path / "notes.pth"
  src.write_text("not a checkpoint")
  result = run_cli(str(src), str(tmp_path / "out"))
  assert result.returncode == 2
  assert "ERROR:" in result.stderr and "notes.pth" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


# --- torchvision-style plain ResNets. -----------------------------------------------------


@pytest.fixture(scope="module")
def plain_net():
  torch.manual_seed(2)
  x = torch.randn(4, 3, *TINY_SIZE)
  return randomize_(ref.resnet_ibn_a_tiny(ibn_cfg=(None,) * 4), x, seed=3)


def test_plain_resnet_into_a_plain_model_is_exact(plain_net, tmp_path):
  src = str(tmp_path / "plain.pth")
  torch.save(plain_net.state_dict(), src)
  config = plain_layout(tiny.get_config(), 2)
  config.model.ibn_stages = ()
  conversion = convert_ibn.convert_file(src, tmp_path / "out", config)
  assert conversion.ibn_from_bn == [] and conversion.unused["unexpected"] == []
  x = np.random.default_rng(5).normal(size=(2, *TINY_SIZE, 3)).astype(np.float32)
  expected = torch_stages(plain_net, x)
  actual = flax_stages(config.model, str(tmp_path / "out"), x)
  assert relative_error(actual["conv5"], expected["conv5"]) <= 1e-4


def test_plain_resnet_into_ibn_splits_bn1_and_says_so(plain_net, tmp_path):
  src = str(tmp_path / "plain.pth")
  torch.save(plain_net.state_dict(), src)
  conversion = convert_ibn.convert_file(src, tmp_path / "out", plain_layout(tiny.get_config(), 2))
  assert conversion.ibn_from_bn == [f"layer{s}.{i}.bn1" for s in (1, 2, 3) for i in (0, 1)]
  assert conversion.unused["unexpected"] == []  # the plain bn1 tensors were used
  assert conversion.left_at_init["missing from the checkpoint"] == []
  report = conversion.report()
  assert "IBN-a norms filled from plain BatchNorm" in report and "layer1.{0..1}.bn1" in report
  sd = {k: v.numpy() for k, v in plain_net.state_dict().items()}
  loaded = pretrained.load_pretrained(tmp_path / "out")
  bn1 = loaded["params"]["backbone"]["layer2_1"]["bn1"]
  half = 16 // 2  # Conv3_x width 16
  np.testing.assert_array_equal(bn1["IN"]["scale"], sd["layer2.1.bn1.weight"][:half])
  np.testing.assert_array_equal(bn1["IN"]["bias"], sd["layer2.1.bn1.bias"][:half])
  np.testing.assert_array_equal(bn1["BN"]["scale"], sd["layer2.1.bn1.weight"][half:])
  stats = loaded["batch_stats"]["backbone"]["layer2_1"]["bn1"]["BN"]
  np.testing.assert_array_equal(stats["mean"], sd["layer2.1.bn1.running_mean"][half:])
  np.testing.assert_array_equal(stats["var"], sd["layer2.1.bn1.running_var"][half:])
  # Conv5_x has no IBN in the model: its plain bn1 maps directly.
  np.testing.assert_array_equal(
    loaded["params"]["backbone"]["layer4_0"]["bn1"]["scale"], sd["layer4.0.bn1.weight"]
  )


def test_ibn_checkpoint_into_a_plain_model_is_an_error(tiny_net, tmp_path):
  src = str(tmp_path / "ibn.pth")
  torch.save(tiny_net.state_dict(), src)
  config = plain_layout(tiny.get_config(), 2)
  config.model.ibn_stages = ()
  with pytest.raises(ConversionError, match=r"lacks backbone entries(.|\n)*layer1_\{0..1\}/bn1/"):
    convert_ibn.convert_file(src, tmp_path / "out", config)
  assert not (tmp_path / "out").exists()


# --- Bad input. -----------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path):
  src = tmp_path / "readme.pth"
  src.write_text("hello")
  with pytest.raises(ConversionError, match="readme.pth.*not a readable PyTorch checkpoint"):
    convert_ibn.convert_file(src, tmp_path / "out")
  with pytest.raises(ConversionError, match="does not exist"):
    convert_ibn.convert_file(tmp_path / "nope.pth", tmp_path / "out")
  torch.save(torch.zeros(3), tmp_path / "tensor.pth")
  with pytest.raises(ConversionError, match="holds a Tensor, not a state_dict"):
    convert_ibn.convert_file(tmp_path / "tensor.pth", tmp_path / "out")
  torch.save({"conv1.weight": torch.zeros(3), "lr": 0.1}, tmp_path / "mixed.pth")
  with pytest.raises(ConversionError, match="'lr' is a float, not a tensor"):
    convert_ibn.convert_file(tmp_path / "mixed.pth", tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_wrong_shape_names_the_key_and_both_shapes(tiny_net, tmp_path):
  sd = dict(tiny_net.state_dict())
  sd["layer2.1.conv1.weight"] = torch.zeros(16, 48, 1, 1)
  torch.save(sd, tmp_path / "bad.pth")
  match = (
    r"'layer2.1.conv1.weight' has shape \(16, 48, 1, 1\)"
    r".*layer2_1/conv1/kernel \(1, 1, 64, 16\) needs \(16, 64, 1, 1\)"
  )
  with pytest.raises(ConversionError, match=match):
    convert_ibn.convert_file(
      tmp_path / "bad.pth", tmp_path / "out", plain_layout(tiny.get_config(), 2)
    )
  # The tiny checkpoint against the default R50 layout fails on the first tensor.
  torch.save(tiny_net.state_dict(), tmp_path / "tiny.pth")
  with pytest.raises(
    ConversionError, match=r"tensor '(conv1|bn1)\.\w+' has shape \(8,.*needs \(64,"
  ):
    convert_ibn.convert_file(tmp_path / "tiny.pth", tmp_path / "out")  # default: R50 layout
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
  "state_dict, match",
  [
    ({}, "holds no tensors"),
    ({"bn1.num_batches_tracked": torch.tensor(3)}, "holds no tensors"),
    (
      {"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)},
      r"none of its 2 tensors belongs to the model's backbone \(its keys start: encoder.weight",
    ),
  ],
)
def test_empty_or_unrelated_state_dict(tmp_path, state_dict, match):
  torch.save(state_dict, tmp_path / "x.pth")
  with pytest.raises(ConversionError, match=match):
    convert_ibn.convert_file(
      tmp_path / "x.pth", tmp_path / "out", plain_layout(tiny.get_config(), 2)
    )
  assert not (tmp_path / "out").exists()


def test_partial_checkpoint_needs_allow_missing(tiny_net, tmp_path):
  sd = {k: v for k, v in tiny_net.state_dict().items() if not k.startswith("layer4.")}
  torch.save(sd, tmp_path / "partial.pth")
  config = plain_layout(tiny.get_config(), 2)
  with pytest.raises(ConversionError, match=r"--allow_missing(.|\n)*layer4_\{0..1\}/conv2/kernel"):
    convert_ibn.convert_file(tmp_path / "partial.pth", tmp_path / "out", config)
  assert not (tmp_path / "out").exists()
  conversion = convert_ibn.convert_file(
    tmp_path / "partial.pth", tmp_path / "out", config, allow_missing=True
  )
  missing = conversion.left_at_init["missing from the checkpoint"]
  assert missing and all("/backbone/layer4_" in p for p in missing)
  assert "params/backbone/layer4_1/conv3/kernel" in missing
  assert "model entries left at init (missing from the checkpoint)" in conversion.report()


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(ImportError, match="download.pytorch.org/whl/cpu"):
    convert_ibn.convert_file(tmp_path / "x.pth", tmp_path / "out")


# --- Full size: ResNet50-IBN-a at 256x128. ----------------------------------------------------


FULL_SIZE = (256, 128)


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
  """Random ResNet50-IBN-a saved as `{'state_dict': {'module.' + key: ...}}`, converted once
  for the baseline layout (the default of the CLI)."""
  torch.manual_seed(10)
  x = torch.randn(2, 3, *FULL_SIZE)
  net = randomize_(ref.resnet50_ibn_a(last_stride=2), x, seed=11)
  directory = tmp_path_factory.mktemp("r50")
  src, dst = str(directory / "r50_ibn_a.pth"), str(directory / "r50_ibn_a.msgpack")
  torch.save(wrap(net.state_dict(), "state_dict"), src)
  conversion = convert_ibn.convert_file(src, dst)  # default layout
  return net, src, dst, conversion


@pytest.mark.parametrize("last_stride", [2, 1])
def test_r50_ibn_a_matches_torch_at_256x128(r50, last_stride):
  net, _, dst, conversion = r50
  assert conversion.unused == {
    "replaced by MHSA": [],
    "ImageNet classifier": ["fc.weight", "fc.bias"],
    "unexpected": [],
  }
  torch_net = ref.resnet50_ibn_a(last_stride=last_stride)
  torch_net.load_state_dict(net.state_dict())
  x = np.random.default_rng(20 + last_stride).normal(size=(1, *FULL_SIZE, 3)).astype(np.float32)
  expected = torch_stages(torch_net, x)
  config = baseline.get_config()
  config.model.last_stride = last_stride
  actual = flax_stages(config.model, dst, x)
  size = (8, 4) if last_stride == 2 else (16, 8)
  assert actual["conv5"].shape == expected["conv5"].shape == (1, *size, 2048)
  errors = {key: relative_error(actual[key], expected[key]) for key, _ in STAGES}
  print(f"last_stride={last_stride}: max|diff| / max|torch| per stage: {errors}")
  assert errors["conv5"] <= 1e-4, errors


@pytest.mark.parametrize("config_module", [fsaf_market], ids=["fsaf_market"])
def test_r50_mhsa_layout_reports_unused_and_init(r50, config_module, tmp_path):
  _, src, baseline_dst, _ = r50
  config = config_module.get_config()
  conversion = convert_ibn.convert_file(src, tmp_path / "out", config)
  conv2 = [f"layer3.{i}.conv2.weight" for i in range(6)] + [
    f"layer4.{i}.conv2.weight" for i in range(3)
  ]
  assert conversion.unused == {
    "replaced by MHSA": conv2,
    "ImageNet classifier": ["fc.weight", "fc.bias"],
    "unexpected": [],
  }
  # Left at init: exactly the MHSA, ECA and head entries of the model, found independently.
  entries, _ = convert_ibn.model_entries(config.model, tuple(config.input.image_size))
  names = ["/".join(p) for p in entries]
  new = [n for n in names if "/mhsa/" in n or "/eca" in n or n.split("/")[1] == "head"]
  assert len(new) == 9 * 5 + 5 + 4  # 9 MHSA blocks x (q, k, v, rel_h, rel_w), 5 ECA, head
  assert sorted(conversion.left_at_init["no ImageNet counterpart"]) == sorted(new)
  assert conversion.left_at_init["missing from the checkpoint"] == []
  assert sorted(conversion.converted) == sorted(set(names) - set(new))
  report = conversion.report()
  assert "checkpoint tensors unused (replaced by MHSA): 9" in report
  assert "layer3.{0..5}.conv2.weight" in report and "layer4.{0..2}.conv2.weight" in report
  assert (
    "params/backbone/layer3_{0..5}/mhsa/{key/kernel,query/kernel,rel_h,rel_w,value/kernel}"
    in report
  )
  # The default (baseline-layout) file applied to this model: same split, reported.
  model = registry.create_model(config.model, num_classes=751)
  x = jax.ShapeDtypeStruct((1, *config.input.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  _, applied = pretrained.apply_pretrained(fresh, baseline_dst)
  assert sorted(applied.dropped) == sorted(
    f"params/backbone/layer{s}_{i}/conv2/kernel" for s, n in ((3, 6), (4, 3)) for i in range(n)
  )
  assert sorted(applied.left_at_init) == sorted(new)
