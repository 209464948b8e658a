"""BNNeck head: frozen shift, bias-free classifier, numerics against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.head import BNNeckHead


def test_param_tree_has_no_bias():
  x = jnp.ones((2, 3, 2, 16))
  variables = BNNeckHead(num_classes=5).init(jax.random.key(0), x)
  shapes = jax.tree.map(lambda a: a.shape, variables)
  assert shapes == {
    "params": {"bnneck": {"scale": (16,)}, "classifier": {"kernel": (16, 5)}},
    "batch_stats": {"bnneck": {"mean": (16,), "var": (16,)}},
  }


def test_classifier_init_std():
  variables = BNNeckHead(num_classes=751).init(jax.random.key(0), jnp.ones((1, 2, 2, 2048)))
  std = float(np.std(variables["params"]["classifier"]["kernel"]))
  assert abs(std - 0.001) < 0.00002  # 1.5M samples: sampling error ~6e-7


@pytest.mark.parametrize("train", [False, True])
def test_outputs_match_numpy(train):
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 2, (4, 3, 2, 6)).astype(np.float32)
  scale, kernel = rng.uniform(0.5, 1.5, 6), rng.normal(size=(6, 3))
  mean, var = rng.normal(size=6), rng.uniform(0.5, 2, 6)
  variables = {
    "params": {"bnneck": {"scale": scale}, "classifier": {"kernel": kernel}},
    "batch_stats": {"bnneck": {"mean": mean, "var": var}},
  }
  variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
  out, _ = BNNeckHead(num_classes=3).apply(variables, x, train=train, mutable=["batch_stats"])
  feat = x.astype(np.float64).mean((1, 2))
  m, v = (feat.mean(0), feat.var(0)) if train else (mean, var)
  bn_feat = (feat - m) / np.sqrt(v + 1e-5) * scale  # shift frozen at 0
  np.testing.assert_allclose(out["feat"], feat, rtol=1e-5)
  np.testing.assert_allclose(out["bn_feat"], bn_feat, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["logits"], bn_feat @ kernel, rtol=1e-4, atol=1e-5)
  assert all(v.dtype == jnp.float32 for v in out.values())


def test_gem_head_and_bad_pooling():
  x = jnp.full((1, 2, 2, 4), 2.0, jnp.bfloat16)
  head = BNNeckHead(num_classes=2, pooling="gem", gem_p=4.0)
  out = head.apply(head.init(jax.random.key(0), x), x)
  np.testing.assert_allclose(out["feat"], 2.0, rtol=1e-5)
  assert out["feat"].dtype == jnp.float32
  with pytest.raises(ValueError, match="pooling='max'"):
    BNNeckHead(num_classes=2, pooling="max").init(jax.random.key(0), x)
