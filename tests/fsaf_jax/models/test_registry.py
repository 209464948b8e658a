"""Models and backbones by name: a backbone registered here (no library file touched)
builds through `create_model`, with the library's head and the usual variable names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import tiny
from fsaf_jax.core.errors import UserError
from fsaf_jax.models import plugin, registry


class ToyBackbone(nn.Module):
  """Three strided convs: 'conv3' (1/2), 'conv4' (1/4), 'conv5' (1/8) of the input."""

  width: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    out = {}
    for i, key in enumerate(("conv3", "conv4", "conv5")):
      x = nn.relu(nn.Conv(self.width * 2**i, (3, 3), strides=2, dtype=self.dtype, name=key)(x))
      out[key] = x
    return out


@pytest.fixture
def toy_registered(monkeypatch):
  """Registers 'toy' (reading `config.model.toy_width`) for one test."""
  registry.backbone_names()  # the built-in plug-ins first, so the copy restored holds them
  monkeypatch.setattr(plugin, "BACKBONES", dict(plugin.BACKBONES))

  @registry.register_backbone("toy")
  def build(model_config, dtype):
    if model_config.toy_width < 1:
      raise ValueError(f"model.toy_width={model_config.toy_width}: must be positive")
    return ToyBackbone(width=model_config.toy_width, dtype=dtype)

  return build


@pytest.mark.parametrize("fusion, dim", [("concat", 4 + 8 + 16), ("none", 16)])
def test_a_registered_backbone_builds_through_the_config(toy_registered, fusion, dim):
  config = tiny.get_config()
  config.model.backbone = "toy"
  config.model.toy_width = 4  # the new backbone's own field
  config.model.fusion = fusion
  assert "toy" in registry.backbone_names()
  model = registry.create_model(config.model, 3)
  x = jnp.ones((2, 64, 32, 3))
  variables = model.init(jax.random.key(0), x)
  names = set(traverse_util.flatten_dict(variables["params"], sep="/"))
  assert names == {
    "backbone/conv3/kernel",
    "backbone/conv3/bias",
    "backbone/conv4/kernel",
    "backbone/conv4/bias",
    "backbone/conv5/kernel",
    "backbone/conv5/bias",
    "head/bnneck/scale",
    "head/classifier/kernel",
  }
  out = model.apply(variables, x)
  assert out["fused"].shape == (2, 8, 4, dim)
  assert out["feat"].shape == out["bn_feat"].shape == (2, dim)
  assert out["logits"].shape == (2, 3)
  # The head is the library's: BNNeck (eval mode: running stats 0 / 1) then the classifier.
  bn = out["feat"] / np.sqrt(1 + 1e-5) * variables["params"]["head"]["bnneck"]["scale"]
  np.testing.assert_allclose(out["bn_feat"], bn, rtol=1e-5)
  config.model.toy_width = 0
  with pytest.raises(ValueError, match="model.toy_width=0"):
    registry.create_model(config.model, 3)


def test_builtin_names_and_unknown_ones():
  assert "resnet_ibn_a" in registry.backbone_names()
  assert registry.model_names() == ("fsaf",)
  config = tiny.get_config()
  config.model.backbone = "nope"
  with pytest.raises(ValueError, match=r"model.backbone='nope': must be one of \(.*'resnet_ibn_a'"):
    registry.create_model(config.model, 3)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("backbone", "resnet18", "model.backbone='resnet18': must be one of"),
    ("name", "fsa", "model.name='fsa': must be one of"),
    ("dtype", "float64", "model.dtype='float64': must be one of"),
    ("eca_placement", "everywhere", "model.eca_placement='everywhere': must be one of"),
    ("pooling", "max2", "model.pooling='max2': must be one of"),
  ],
)
def test_a_bad_model_field_is_a_user_error(field, value, message):
  """Printed by the commands as one ERROR line (exit 2), not a traceback."""
  config = tiny.get_config()
  config.model[field] = value
  with pytest.raises(UserError, match=message):
    model = registry.create_model(config.model, 3)
    model.init(jax.random.key(0), jnp.zeros((1, 64, 32, 3)), train=False)


def test_a_name_cannot_be_registered_twice(toy_registered):
  with pytest.raises(ValueError, match="'toy' is already registered"):
    registry.register_backbone("toy")(lambda model_config, dtype: None)
  registry.register_backbone("toy")(toy_registered)  # the same builder again: fine
