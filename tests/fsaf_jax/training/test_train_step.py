"""The data-parallel train step: N devices = 1 device, the step against an independent
computation, centre-loss updates, bad input and the NaN check.

Uses the tiny model (`configs/tiny.py`, 64x32 input), global batch 16 (P=4, K=4) and
the 4 simulated CPU devices of `tests/conftest.py`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.losses.reid_loss import reid_loss
from fsaf_jax.models.preprocessing import normalize_images
from fsaf_jax.training.train_step import check_finite_metrics, make_train_step
from tests.reference.tiny_train_run import (
  BATCH,
  NUM_CLASSES,
  config,
  initial_state_host,
  make_batches,
  run,
  tree_rel_diff,
)
from tests.reference.tiny_train_run import (
  model as tiny_model,
)


def test_n_devices_equal_one_device(num_devices):
  assert num_devices == 4
  states_n, metrics_n = run(num_devices)
  states_1, metrics_1 = run(1)
  # Float32 rounding differs (reduction order across devices, per-device conv
  # blocking): ~1e-6 relative in the first forward pass, amplified by train-mode
  # BatchNorm on the 2x1 Conv5_x maps of the tiny model and, in the second step, by
  # Adam's normalisation of near-zero gradient entries (measured: loss 3e-6 / 2e-5,
  # grad norm 5e-4 / 3e-3 relative in steps 1 / 2). A step that mined triplets or
  # took BatchNorm statistics per device would differ by O(1).
  for step, rtol in ((0, 1e-5), (1, 1e-4)):
    for key in ("loss", "ce", "triplet", "accuracy", "lr"):
      np.testing.assert_allclose(
        metrics_n[step][key], metrics_1[step][key], rtol=rtol, err_msg=f"{key} {step}"
      )
    np.testing.assert_allclose(
      metrics_n[step]["grad_norm"], metrics_1[step]["grad_norm"], rtol=1e-2
    )
  final_n, final_1 = states_n[-1], states_1[-1]
  assert int(final_n.step) == int(final_1.step) == 2
  assert tree_rel_diff(final_n.params, final_1.params) <= 1e-5
  assert tree_rel_diff(final_n.batch_stats, final_1.batch_stats) <= 1e-5
  # Not vacuous: the statistics moved by far more than that ...
  init = initial_state_host(0.0)
  assert tree_rel_diff(final_1.batch_stats, init.batch_stats) > 1e-2
  # ... and so did the parameters (lr 3.8e-6 in BoT's epoch 0: ~4e-5 relative), by the
  # same updates: Adam turns entries whose gradient is below the rounding noise into
  # +-lr steps of either sign (~0.3% of them; measured 3% of the update norm).
  update = lambda s: jax.tree.map(lambda a, b: a - b, s.params, init.params)
  assert tree_rel_diff(final_1.params, init.params) > 2e-5
  assert tree_rel_diff(update(final_n), update(final_1)) <= 0.1


def test_step_matches_independent_computation():
  cfg = config(0.0)
  model, init = tiny_model(), initial_state_host(0.0)
  batch = make_batches()[0]
  states, metrics = run(1)
  state_1, metrics = states[0], metrics[0]

  def loss_fn(params):
    x = normalize_images(jnp.asarray(batch["image"]))
    out, upd = model.apply(
      {"params": params, "batch_stats": init.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return reid_loss(out, batch["label"], cfg.loss)[0], (upd["batch_stats"], out)

  (loss, (batch_stats, out)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
    init.params
  )
  trainable, grads = init.trainable, {"model": grads, "loss": {}}
  updates, _ = init.tx.update(grads, init.tx.init(trainable), trainable)
  params = optax.apply_updates(trainable, updates)["model"]
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  # A different XLA program (fusion, reduction order): rounding-level differences,
  # amplified in the gradients as in test_n_devices_equal_one_device.
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads["model"]), rtol=1e-3)
  # BoT's epoch 0 (last_epoch 1): 0.01 * 0.9 + 0.1 = 0.109 of the base lr.
  np.testing.assert_allclose(metrics["lr"], cfg.optim.base_lr * 0.109, rtol=1e-6)
  acc = np.mean(np.argmax(out["logits"], -1) == batch["label"])
  np.testing.assert_allclose(metrics["accuracy"], acc)
  assert tree_rel_diff(state_1.batch_stats, batch_stats) <= 1e-5
  assert tree_rel_diff(state_1.params, params) <= 1e-5
  assert int(state_1.step) == 1


def test_center_loss_centres_follow_unweighted_sgd():
  """With centre loss on, centres move by -center_lr * dL_center/dc (BoT: unweighted)."""
  cfg = config(5e-4)
  model, init = tiny_model(), initial_state_host(5e-4)
  centers = init.loss_params["center"]
  assert centers.shape == (NUM_CLASSES, 448)
  states, metrics = run(1, 5e-4)
  batch = make_batches()[0]
  x = normalize_images(jnp.asarray(batch["image"]))
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  out, _ = apply({"params": init.params, "batch_stats": init.batch_stats}, x)
  feat = np.asarray(out["feat"], np.float64)
  labels = batch["label"]
  grad = np.zeros_like(centers, np.float64)
  for i, y in enumerate(labels):
    grad[y] -= 2.0 * (feat[i] - centers[y]) / BATCH
  want = centers - cfg.loss.center_lr * grad
  new_centers = states[0].loss_params["center"]
  np.testing.assert_allclose(new_centers, want, rtol=1e-4, atol=1e-5)
  absent = np.setdiff1d(np.arange(NUM_CLASSES), labels)
  np.testing.assert_array_equal(new_centers[absent], centers[absent])
  want_loss = np.sum((feat - centers[labels]) ** 2) / BATCH
  np.testing.assert_allclose(metrics[0]["center"], want_loss, rtol=1e-5)


def test_batch_not_divisible_by_devices_raises():
  step = make_train_step(tiny_model(), config(0.0).loss, make_mesh())
  batch = {"image": np.zeros((10, 64, 32, 3), np.uint8), "label": np.zeros(10, np.int32)}
  with pytest.raises(ValueError, match=r"global batch size 10 is not divisible by the 4 dev"):
    step(initial_state_host(0.0), batch)


def test_check_finite():
  check_finite_metrics({"loss": np.float32(1.5), "ce": np.float32(1.0)}, step=3)
  for bad in (np.nan, np.inf):
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step 7"):
      check_finite_metrics({"loss": np.float32(bad), "ce": np.float32(1.0)}, step=7)
  with pytest.raises(FloatingPointError, match="grad_norm"):
    check_finite_metrics({"loss": 1.0, "grad_norm": np.nan}, step=0, keys=("loss", "grad_norm"))
