"""Losses by name: a term registered here (no library file touched) joins the objective
through its config weight; its parameters are created and optimised like the centres."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.base import get_base_config
from fsaf_jax.losses import registry
from fsaf_jax.losses.reid_loss import init_loss_params, loss_optimizers, reid_loss
from fsaf_jax.losses.triplet import batch_hard_triplet_loss


@pytest.fixture
def fresh_registry(monkeypatch):
  registry.loss_names()  # the built-in terms first, so the copy restored holds them
  monkeypatch.setattr(registry, "_LOSSES", dict(registry._LOSSES))


def _outputs():
  rng = np.random.default_rng(0)
  return {
    "feat": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
    "logits": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
  }


def test_builtin_names():
  assert {"ce", "triplet", "center"} <= set(registry.loss_names())


def test_a_registered_term_joins_the_sum(fresh_registry):
  @registry.register_loss("feat_norm")
  def feat_norm(outputs, labels, loss_config):
    return jnp.mean(jnp.sum(outputs["feat"] ** 2, -1)) * loss_config.feat_norm_scale

  cfg = get_base_config().loss
  cfg.ce_weight = 0.0
  cfg.feat_norm_weight = 0.25  # the config change that turns it on
  cfg.feat_norm_scale = 2.0
  out, labels = _outputs(), jnp.repeat(jnp.arange(4), 2)
  total, parts = reid_loss(out, labels, cfg)
  want = 2.0 * np.mean(np.sum(np.asarray(out["feat"], np.float64) ** 2, -1))
  assert sorted(parts) == ["feat_norm", "triplet"]
  np.testing.assert_allclose(parts["feat_norm"], want, rtol=1e-6)
  tri = batch_hard_triplet_loss(out["feat"], labels, 0.3)
  np.testing.assert_allclose(total, tri + 0.25 * want, rtol=1e-6)


def test_a_term_with_parameters_gets_init_and_optimizer(fresh_registry):
  @registry.register_loss(
    "bias",
    init=lambda rng, num_classes, dim, cfg: jnp.full((dim,), cfg.bias_init),
    optimizer=lambda loss_config: optax.sgd(0.1),
  )
  def bias(outputs, labels, loss_config, params):
    return jnp.sum((outputs["feat"] - params) ** 2)

  config = get_base_config()
  config.loss.ce_weight = config.loss.triplet_weight = 0.0
  config.loss.bias_weight = 1.0
  config.loss.bias_init = 0.5
  config.loss.center_weight = 5e-4
  params = init_loss_params(jax.random.key(0), config.loss, 5, 4)
  assert sorted(params) == ["bias", "center"]
  np.testing.assert_array_equal(params["bias"], np.full(4, 0.5, np.float32))
  assert params["center"].shape == (5, 4)
  assert sorted(loss_optimizers(config.loss)) == ["bias", "center"]
  with pytest.raises(ValueError, match="bias_weight=1.0 but no parameters of the 'bias'"):
    reid_loss(_outputs(), jnp.zeros(8, jnp.int32), config.loss, {"center": params["center"]})


def test_unknown_weight_and_double_registration(fresh_registry):
  cfg = get_base_config().loss
  cfg.focal_weight = 1.0
  with pytest.raises(ValueError, match=r"config.loss.focal_weight=1.0: there is no loss 'focal'"):
    reid_loss(_outputs(), jnp.zeros(8, jnp.int32), cfg)
  with pytest.raises(ValueError, match="'ce' is already registered"):
    registry.register_loss("ce")(lambda *args: 0.0)
  with pytest.raises(ValueError, match="needs both init and optimizer"):
    registry.register_loss("x", init=lambda *args: None)


def test_centre_optimizer_is_sgd_on_the_unweighted_gradient():
  """BoT: centres -= center_lr * grad(total) / center_weight."""
  config = get_base_config()
  config.loss.center_weight = 5e-4
  tx = loss_optimizers(config.loss)["center"]
  centers = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)), jnp.float32)
  grads = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2)), jnp.float32)
  updates, _ = tx.update(grads, tx.init(centers), centers)
  np.testing.assert_allclose(
    optax.apply_updates(centers, updates), centers - 0.5 * (grads / 5e-4), rtol=1e-6
  )
