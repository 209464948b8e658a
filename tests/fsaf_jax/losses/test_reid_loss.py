"""The combined ReID loss: label-smoothed CE by hand (and torch), weights, parts."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.base import get_base_config
from fsaf_jax.losses.center import center_loss
from fsaf_jax.losses.cross_entropy import smoothed_cross_entropy
from fsaf_jax.losses.reid_loss import reid_loss
from fsaf_jax.losses.triplet import batch_hard_triplet_loss


def _ce_reference(logits, labels, eps):
  logits = np.asarray(logits, np.float64)
  b, c = logits.shape
  total = 0.0
  for i in range(b):
    m = logits[i].max()
    log_z = m + np.log(np.sum(np.exp(logits[i] - m)))
    for k in range(c):
      target = (1 - eps) * (k == labels[i]) + eps / c
      total -= target * (logits[i, k] - log_z)
  return total / b


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_matches_formula_and_torch(eps):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(5, 7)) * 3).astype(np.float32)
  labels = np.array([0, 6, 3, 3, 1])
  got = smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps)
  np.testing.assert_allclose(got, _ce_reference(logits, labels, eps), rtol=1e-5)
  torch_value = torch.nn.functional.cross_entropy(
    torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=eps
  )
  np.testing.assert_allclose(got, torch_value.item(), rtol=1e-5)


def test_bad_smoothing_raises():
  with pytest.raises(ValueError, match="label_smoothing"):
    smoothed_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), 1.0)


def _outputs(rng):
  return {
    "feat": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
    "logits": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
  }


def test_total_is_weighted_sum_of_parts():
  rng = np.random.default_rng(1)
  out = _outputs(rng)
  labels = jnp.asarray(np.repeat(np.arange(4), 2))
  centers = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  cfg = get_base_config().loss
  cfg.ce_weight, cfg.triplet_weight, cfg.center_weight = 0.7, 1.3, 5e-4
  total, parts = reid_loss(out, labels, cfg, {"center": centers})
  ce = _ce_reference(out["logits"], np.asarray(labels), 0.1)
  tri = batch_hard_triplet_loss(out["feat"], labels, 0.3)
  cen = center_loss(out["feat"], labels, centers)
  np.testing.assert_allclose(parts["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(parts["triplet"], tri, rtol=1e-6)
  np.testing.assert_allclose(parts["center"], cen, rtol=1e-6)
  np.testing.assert_allclose(total, 0.7 * ce + 1.3 * tri + 5e-4 * cen, rtol=1e-5)


def test_defaults_soft_margin_and_disabled_parts():
  rng = np.random.default_rng(2)
  out = _outputs(rng)
  labels = jnp.asarray(np.repeat(np.arange(4), 2))
  cfg = get_base_config().loss
  total, parts = reid_loss(out, labels, cfg)
  assert sorted(parts) == ["ce", "triplet"]  # centre loss off by default
  np.testing.assert_allclose(total, parts["ce"] + parts["triplet"], rtol=1e-6)
  cfg.triplet_margin = None
  cfg.ce_weight = 0.0
  total, parts = reid_loss(out, labels, cfg)
  assert sorted(parts) == ["triplet"]
  np.testing.assert_allclose(total, batch_hard_triplet_loss(out["feat"], labels, None))


def test_center_weight_without_centers_raises():
  cfg = get_base_config().loss
  cfg.center_weight = 5e-4
  with pytest.raises(ValueError, match="center_weight"):
    reid_loss(_outputs(np.random.default_rng(3)), jnp.zeros(8, jnp.int32), cfg)
