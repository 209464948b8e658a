"""BoT optimiser: the lr schedule against the recipe's formula, Adam with coupled decay
against a hand-written NumPy Adam, parameter groups on the real model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.base import get_base_config
from fsaf_jax.training.optimizer import (
  create_lr_schedule,
  create_optimizer,
  param_groups,
  partition_optimizer,
)

STEPS_PER_EPOCH = 7


def _bot_lr(step: int, spe: int, base=3.5e-4, warmup=10, factor=0.01, milestones=(40, 70)):
  """reid-strong-baseline: WarmupMultiStepLR.step() at every epoch start (1-based)."""
  last_epoch = step // spe + 1
  alpha = last_epoch / warmup if last_epoch < warmup else 1.0
  warm = factor * (1 - alpha) + alpha
  return base * warm * 0.1 ** sum(m <= last_epoch for m in milestones)


def _fastreid_lr(step: int, spe: int, base=3.5e-4, warmup_iters=2000, milestones=(40, 90)):
  """fast-reid: WarmupLR after every iteration while in warmup; MultiStepLR.step() after
  every epoch whose last iteration is past the warmup (LRScheduler hook), simulated."""
  lr_sched_steps = 0
  for epoch in range(step // spe):
    last_iter = (epoch + 1) * spe - 1
    if last_iter + 1 > warmup_iters:
      lr_sched_steps += 1
  warm = 0.1 * (1 - step / warmup_iters) + step / warmup_iters if step < warmup_iters else 1.0
  return base * warm * 0.1 ** sum(m <= lr_sched_steps for m in milestones)


def test_bot_schedule_every_step_equals_recipe():
  schedule = create_lr_schedule(get_base_config().optim, STEPS_PER_EPOCH)
  steps = np.arange(120 * STEPS_PER_EPOCH)
  got = np.asarray(jax.vmap(schedule)(steps))
  want = np.array([_bot_lr(int(s), STEPS_PER_EPOCH) for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6)


def test_bot_schedule_hand_values():
  lr = lambda step: float(create_lr_schedule(get_base_config().optim, STEPS_PER_EPOCH)(step))
  spe = STEPS_PER_EPOCH
  # Epoch 0 runs with last_epoch 1: 0.01 * 0.9 + 0.1 = 0.109 of base, the whole epoch.
  for step in (0, spe - 1):
    np.testing.assert_allclose(lr(step), 3.815e-5, rtol=1e-6)
  np.testing.assert_allclose(lr(spe), 3.5e-4 * (0.01 * 0.8 + 0.2), rtol=1e-6)
  np.testing.assert_allclose(lr(8 * spe), 3.5e-4 * (0.01 * 0.1 + 0.9), rtol=1e-6)
  np.testing.assert_allclose(lr(9 * spe), 3.5e-4, rtol=1e-6)  # full lr from epoch 9
  np.testing.assert_allclose(lr(39 * spe - 1), 3.5e-4, rtol=1e-6)
  np.testing.assert_allclose(lr(39 * spe), 3.5e-5, rtol=1e-6)  # x0.1 from epoch 39
  np.testing.assert_allclose(lr(69 * spe - 1), 3.5e-5, rtol=1e-6)
  np.testing.assert_allclose(lr(69 * spe), 3.5e-6, rtol=1e-6)  # and from epoch 69
  np.testing.assert_allclose(lr(120 * spe - 1), 3.5e-6, rtol=1e-6)


def test_bot_schedule_without_warmup_and_milestone_inside_warmup():
  cfg = get_base_config().optim
  cfg.warmup_epochs = 0
  np.testing.assert_allclose(float(create_lr_schedule(cfg, 3)(0)), 3.5e-4, rtol=1e-6)
  cfg.warmup_epochs, cfg.milestones = 10, (4,)
  got = [float(create_lr_schedule(cfg, 1)(e)) for e in range(12)]
  want = [_bot_lr(e, 1, milestones=(4,)) for e in range(12)]
  np.testing.assert_allclose(got, want, rtol=2e-6)
  assert got[3] < got[2]  # the milestone acts inside the warmup, at 0-based epoch 3


@pytest.mark.parametrize("spe", [202, 7, 250, 2000])
def test_fastreid_schedule_equals_simulated_hooks(spe):
  cfg = get_base_config().optim
  cfg.lr_schedule, cfg.warmup_epochs, cfg.warmup_iters = "fastreid", 0, 2000
  cfg.warmup_factor, cfg.milestones = 0.1, (40, 90)
  schedule = create_lr_schedule(cfg, spe)
  steps = np.unique(np.concatenate([np.arange(0, 2100), np.arange(0, 120 * spe, max(1, spe // 5))]))
  steps = np.unique(np.concatenate([steps, np.arange(120) * spe, np.arange(1, 121) * spe - 1]))
  got = np.asarray(jax.vmap(schedule)(steps))
  want = np.array([_fastreid_lr(int(s), spe) for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6)
  if spe == 202:  # fast-reid's Market epoch: the decays act from epochs 49 and 99
    assert float(schedule(49 * 202 - 1)) == pytest.approx(3.5e-4, rel=1e-6)
    assert float(schedule(49 * 202)) == pytest.approx(3.5e-5, rel=1e-6)
    assert float(schedule(99 * 202)) == pytest.approx(3.5e-6, rel=1e-6)


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("milestones", (70, 40), "milestones"),
    ("milestones", (40, 40), "milestones"),
    ("warmup_factor", 0.0, "warmup_factor"),
    ("warmup_epochs", -1, "warmup_epochs"),
    ("warmup_iters", 100, "warmup_iters=100 has no effect"),
    ("lr_schedule", "cosine", "lr_schedule"),
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
  lrs = [_bot_lr(s, 2, warmup=2) for s in range(3)]
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
  from fsaf_jax.models.registry import create_model

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


def test_partition_optimizer_trains_each_subtree_alone():
  """Same updates and states as each transformation applied to its own subtree."""
  rng = np.random.default_rng(0)
  params = {"model": {"w": rng.normal(size=(3,))}, "loss": {"c": rng.normal(size=(2, 2))}}
  grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
  adam, sgd = optax.adamw(1e-2, weight_decay=0.1), optax.sgd(0.5)
  tx = partition_optimizer({"model": adam, "loss": sgd})
  state = tx.init(params)
  assert set(state) == {"model", "loss"}
  updates, state = tx.update(grads, state, params)
  want_m, _ = adam.update(grads["model"], adam.init(params["model"]), params["model"])
  np.testing.assert_allclose(updates["model"]["w"], want_m["w"], rtol=1e-6)
  np.testing.assert_allclose(updates["loss"]["c"], -0.5 * grads["loss"]["c"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"keys \['model'\]; the optimiser has \['loss', 'model'\]"):
    tx.init({"model": params["model"]})
