"""Non-finite weights never pass through `convert_ibn` or `pretrained`, and the output
path is checked before the checkpoint is read."""

import numpy as np
import pytest

from configs import tiny
from fsaf_jax import convert_ibn
from fsaf_jax.core import errors
from fsaf_jax.models import pretrained


def _torch_layout(shape):
  """PyTorch shape of a Flax backbone entry: HWIO kernels -> OIHW, vectors unchanged."""
  if len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(shape)


@pytest.fixture(scope="module")
def tiny_state_dict():
  """A complete, finite PyTorch-style state dict for the tiny model's backbone."""
  config = tiny.get_config()
  entries, _ = convert_ibn.model_entries(config.model, tuple(config.input.image_size))
  rng = np.random.default_rng(0)
  state_dict = {}
  for path, spec in entries.items():
    key = convert_ibn.torch_key(path)
    if key is None or path[1] == "head" or "mhsa" in path or any("eca" in p for p in path):
      continue
    state_dict[key] = rng.normal(size=_torch_layout(spec.shape)).astype(np.float32)
  state_dict["fc.weight"] = rng.normal(size=(10, 4)).astype(np.float32)
  return entries, state_dict


def test_the_fixture_converts(tiny_state_dict):
  entries, state_dict = tiny_state_dict
  conversion = convert_ibn.convert_state_dict(state_dict, entries)
  assert conversion.left_at_init["missing from the checkpoint"] == []
  assert len(conversion.converted) == len(state_dict) - 1  # all but fc.weight


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_tensor_is_refused_naming_it(tiny_state_dict, bad):
  entries, state_dict = tiny_state_dict
  key = "layer2.0.conv1.weight"
  damaged = dict(state_dict, **{key: state_dict[key].copy()})
  damaged[key][1, 0, 0, 0] = bad
  damaged[key][3, 1, 0, 0] = bad
  with pytest.raises(
    convert_ibn.ConversionError,
    match=rf"'src.pth': tensor '{key}' has 2 non-finite value\(s\).*first at index \(1, 0, 0, 0\)",
  ):
    convert_ibn.convert_state_dict(damaged, entries, source="'src.pth'")


def test_non_finite_in_an_unused_tensor_is_not_an_error(tiny_state_dict):
  entries, state_dict = tiny_state_dict
  damaged = dict(state_dict, **{"fc.weight": np.full((10, 4), np.nan, np.float32)})
  conversion = convert_ibn.convert_state_dict(damaged, entries)
  assert conversion.unused["ImageNet classifier"] == ["fc.weight"]


def test_non_finite_split_batch_norm_is_named_by_its_plain_key(tiny_state_dict):
  entries, state_dict = tiny_state_dict
  # A torchvision-style checkpoint: plain bn1 where the model has IBN-a (IN + BN).
  plain = {}
  for key, value in state_dict.items():
    head, _, leaf = key.rpartition(".")
    if head.endswith(".bn1.IN") or head.endswith(".bn1.BN"):
      module = head.rsplit(".", 1)[0]
      if f"{module}.{leaf}" in plain:
        continue
      parts = [state_dict.get(f"{module}.IN.{leaf}"), state_dict[f"{module}.BN.{leaf}"]]
      plain[f"{module}.{leaf}"] = np.concatenate([p for p in parts if p is not None])
    else:
      plain[key] = value
  assert any(k.endswith(".bn1.weight") for k in plain)
  ibn_key = next(k for k in plain if k.endswith(".bn1.weight") and "layer1" in k)
  plain[ibn_key] = plain[ibn_key].copy()
  plain[ibn_key][0] = np.nan  # the IN part
  with pytest.raises(convert_ibn.ConversionError, match=rf"tensor '{ibn_key}' has 1 non-finite"):
    convert_ibn.convert_state_dict(plain, entries)


def test_destination_is_checked_before_the_checkpoint_is_read(tmp_path):
  (tmp_path / "a_file").write_text("x")
  for dst, message in [
    (tmp_path, r"DST=.* is a directory"),
    (tmp_path / "a_file" / "out.msgpack", r"DST=.*a_file is not a directory"),
  ]:
    with pytest.raises(errors.UserError, match=message):
      convert_ibn.convert_file(tmp_path / "missing.pth", dst)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_destination_that_is_the_source_is_refused(tmp_path):
  src = tmp_path / "r50.pth"
  src.write_bytes(b"PK\x03\x04 the user's only copy")
  for dst in (src, tmp_path / "." / "r50.pth"):
    with pytest.raises(errors.UserError, match=r"DST=.*r50.pth is SRC"):
      convert_ibn.convert_file(src, dst)
  assert src.read_bytes() == b"PK\x03\x04 the user's only copy"


def test_pretrained_file_with_non_finite_entry_is_refused(tmp_path):
  path = tmp_path / "r50.msgpack"
  kernel = np.ones((3, 3, 3, 8), np.float32)
  kernel[0, 1, 2, 3] = np.nan
  variables = {
    "params": {"backbone": {"conv1": {"kernel": kernel}}},
    "batch_stats": {"backbone": {"bn1": {"mean": np.zeros(8, np.float32)}}},
  }
  pretrained.save_pretrained(path, variables, {"source": "test"})
  data = path.read_bytes()
  with pytest.raises(
    pretrained.PretrainedError,
    match=r"r50.msgpack'?: entry params/backbone/conv1/kernel has 1 non-finite value",
  ):
    pretrained.load_pretrained(path)
  assert path.read_bytes() == data
  variables["params"]["backbone"]["conv1"]["kernel"] = np.ones((3, 3, 3, 8), np.float32)
  variables["batch_stats"]["backbone"]["bn1"]["mean"][5] = -np.inf
  pretrained.save_pretrained(path, variables, {"source": "test"})
  with pytest.raises(pretrained.PretrainedError, match="entry batch_stats/backbone/bn1/mean"):
    pretrained.load_pretrained(path)


def test_a_failed_pretrained_write_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "r50.msgpack"
  variables = {"params": {"backbone": {"conv1": {"kernel": np.ones((1, 1, 3, 2), np.float32)}}}}
  pretrained.save_pretrained(path, variables, {"source": "first"})
  data = path.read_bytes()

  def fail(tree):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(pretrained.serialization, "msgpack_serialize", fail)
  with pytest.raises(OSError, match="No space left"):
    pretrained.save_pretrained(path, variables, {"source": "second"})
  assert path.read_bytes() == data
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r50.msgpack"]
