"""BoT optimiser: the lr schedule against the recipe's formula, Adam with coupled decay
against a hand-written NumPy Adam, parameter groups on the real model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.base import get_base_config
from fsaf_jax.training.optimizer import create_lr_schedule, create_optimizer, param_groups

STEPS_PER_EPOCH = 7


def _recipe_lr(epoch: float) -> float:
  """BoT: base 3.5e-4, linear warmup over 10 epochs from 1%, x0.1 at epochs 40 and 70."""
  base = 3.5e-4
  warm = 0.01 + (1 - 0.01) * epoch / 10 if epoch < 10 else 1.0
  return base * warm * 0.1 ** sum(epoch >= m for m in (40, 70))


@pytest.mark.parametrize("epoch", [0, 5, 10, 39, 40, 69, 70, 119])
def test_schedule_at_epoch_starts_equals_recipe(epoch):
  schedule = create_lr_schedule(get_base_config().optim, STEPS_PER_EPOCH)
  got = float(schedule(epoch * STEPS_PER_EPOCH))
  np.testing.assert_allclose(got, _recipe_lr(epoch), rtol=1e-6)


def test_schedule_hand_values_and_per_step_warmup():
  schedule = create_lr_schedule(get_base_config().optim, STEPS_PER_EPOCH)
  lr = lambda step: float(schedule(step))
  np.testing.assert_allclose(lr(0), 3.5e-6, rtol=1e-6)
  np.testing.assert_allclose(lr(5 * STEPS_PER_EPOCH), 3.5e-4 * 0.505, rtol=1e-6)
  # Warmup is per step: halfway through epoch 5 the lr is between epochs 5 and 6.
  mid = 5 * STEPS_PER_EPOCH + 3
  np.testing.assert_allclose(lr(mid), _recipe_lr(5 + 3 / STEPS_PER_EPOCH), rtol=1e-6)
  assert _recipe_lr(5) < lr(mid) < _recipe_lr(6)
  # Decays land exactly on the epoch boundary.
  np.testing.assert_allclose(lr(40 * STEPS_PER_EPOCH - 1), 3.5e-4, rtol=1e-6)
  np.testing.assert_allclose(lr(40 * STEPS_PER_EPOCH), 3.5e-5, rtol=1e-6)
  np.testing.assert_allclose(lr(70 * STEPS_PER_EPOCH - 1), 3.5e-5, rtol=1e-6)
  np.testing.assert_allclose(lr(70 * STEPS_PER_EPOCH), 3.5e-6, rtol=1e-6)
  np.testing.assert_allclose(lr(120 * STEPS_PER_EPOCH - 1), 3.5e-6, rtol=1e-6)


def test_schedule_without_warmup_and_milestone_inside_warmup():
  cfg = get_base_config().optim
  cfg.warmup_epochs = 0
  np.testing.assert_allclose(float(create_lr_schedule(cfg, 3)(0)), 3.5e-4, rtol=1e-6)
  cfg.warmup_epochs, cfg.milestones = 10, (4,)
  got = float(create_lr_schedule(cfg, 1)(5))
  np.testing.assert_allclose(got, 3.5e-4 * (0.01 + 0.99 * 0.5) * 0.1, rtol=1e-6)


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("milestones", (70, 40), "milestones"),
    ("milestones", (40, 40), "milestones"),
    ("warmup_factor", 0.0, "warmup_factor"),
    ("warmup_epochs", -1, "warmup_epochs"),
    ("weight_decay", -1e-4, "weight_decay"),
  ],
)
def test_bad_config_raises(field, value, match):
  cfg = get_base_config().optim
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    create_optimizer(cfg, 10, {"w": jnp.zeros(2)})


@pytest.mark.parametrize("steps_per_epoch", [0, -1, 2.5])
def test_bad_steps_per_epoch_raises(steps_per_epoch):
  with pytest.raises(ValueError, match="steps_per_epoch"):
    create_lr_schedule(get_base_config().optim, steps_per_epoch)


def _params():
  rng = np.random.default_rng(0)
  return {
    "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
    "bn": {
      "scale": (1 + rng.normal(size=(4,))).astype(np.float32),
      "bias": rng.normal(size=(4,)).astype(np.float32),
    },
    "dense": {
      "kernel": rng.normal(size=(4, 3)).astype(np.float32),
      "bias": rng.normal(size=(3,)).astype(np.float32),
    },
    "neck": {"scale": rng.normal(size=(3,)).astype(np.float32)},
  }


def test_param_groups():
  labels = param_groups(_params())
  assert labels == {
    "conv": {"kernel": "weight"},
    "bn": {"scale": "norm", "bias": "norm"},
    "dense": {"kernel": "weight", "bias": "bias"},
    "neck": {"scale": "norm"},
  }


def _numpy_adam(params, grads_seq, decays, lrs, b1=0.9, b2=0.999, eps=1e-8):
  """PyTorch Adam(weight_decay=wd): g <- g + wd * w, then bias-corrected Adam."""
  params = {k: {n: v.astype(np.float64) for n, v in d.items()} for k, d in params.items()}
  m = {k: {n: 0.0 for n in d} for k, d in params.items()}
  v = {k: {n: 0.0 for n in d} for k, d in params.items()}
  for t, grads in enumerate(grads_seq, start=1):
    for k, d in params.items():
      for n, w in d.items():
        g = grads[k][n] + decays[k][n] * w
        m[k][n] = b1 * m[k][n] + (1 - b1) * g
        v[k][n] = b2 * v[k][n] + (1 - b2) * g * g
        m_hat = m[k][n] / (1 - b1**t)
        v_hat = v[k][n] / (1 - b2**t)
        d[n] = w - lrs[t - 1] * m_hat / (np.sqrt(v_hat) + eps)
  return params


def test_adam_with_coupled_decay_matches_numpy():
  cfg = get_base_config().optim
  # Decays large enough to change the Adam direction; distinct per group.
  cfg.weight_decay, cfg.weight_decay_bias, cfg.weight_decay_norm = 0.5, 2.0, 0.0
  cfg.warmup_epochs = 2
  params = _params()
  rng = np.random.default_rng(1)
  grads_seq = [
    jax.tree.map(lambda p: (0.3 * rng.normal(size=p.shape)).astype(np.float32), params)
    for _ in range(3)
  ]
  tx, schedule = create_optimizer(cfg, 2, params)
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads_seq:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  decay_of = {"weight": 0.5, "bias": 2.0, "norm": 0.0}
  decays = jax.tree.map(lambda label: decay_of[label], param_groups(params))
  lrs = [3.5e-4 * (0.01 + 0.99 * s / 4) for s in range(3)]
  np.testing.assert_allclose([float(schedule(s)) for s in range(3)], lrs, rtol=1e-6)
  want = _numpy_adam(params, grads_seq, decays, lrs)
  for k in params:
    for n in params[k]:
      np.testing.assert_allclose(p[k][n], want[k][n], rtol=1e-6, atol=1e-9, err_msg=f"{k}/{n}")
  # The decay matters: without it the result is different.
  no_decay = _numpy_adam(params, grads_seq, jax.tree.map(lambda _: 0.0, decays), lrs)
  assert np.abs(no_decay["dense"]["bias"] - want["dense"]["bias"]).max() > 1e-5
  assert np.abs(no_decay["conv"]["kernel"] - want["conv"]["kernel"]).max() > 1e-5


def test_param_groups_on_tiny_model():
  from configs.tiny import get_config
  from fsaf_jax.models.fsaf import create_model

  config = get_config()
  model = create_model(config.model, 5)
  h, w = config.input.image_size
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((2, h, w, 3)), train=False)
  )
  flat = {
    "/".join(k.key for k in path): label
    for path, label in jax.tree_util.tree_flatten_with_path(param_groups(shapes["params"]))[0]
  }
  assert flat["head/bnneck/scale"] == "norm"
  assert flat["head/classifier/kernel"] == "weight"
  assert flat["backbone/bn1/bias"] == "norm"
  assert flat["backbone/layer1_0/bn1/IN/scale"] == "norm"
  assert flat["backbone/layer1_0/bn1/BN/bias"] == "norm"
  assert flat["backbone/layer4_0/mhsa/rel_h"] == "weight"
  # Every parameter of a norm layer (bn*, IN, BN, bnneck) is labelled 'norm', nothing else.
  for name, label in flat.items():
    module = name.split("/")[-2]
    is_norm = module.startswith("bn") or module in ("IN", "BN") or module.endswith("_bn")
    assert (label == "norm") == is_norm, name
