"""Batch-hard triplet loss against brute-force loops over all (anchor, pos, neg) triples."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.losses.triplet import batch_hard_triplet_loss, euclidean_distances


def _reference_loss(features, labels, margin):
  """Loops over every triple (i, j, k): y_j = y_i, j != i, y_k != y_i.

  Batch-hard per-anchor loss = max over the anchor's triples of the triple loss (the
  hinge and softplus are increasing, so this is loss(max_j d_ij - min_k d_ik)). The
  loss is the mean over anchors with at least one triple, 0 if there is none.
  """
  x = np.asarray(features, np.float64)
  n = len(x)

  def dist(a, b):
    return np.sqrt(max(np.sum((x[a] - x[b]) ** 2), 1e-12))

  per_anchor = []
  for i in range(n):
    best = None
    for j, k in itertools.product(range(n), range(n)):
      if j == i or labels[j] != labels[i] or labels[k] == labels[i]:
        continue
      diff = dist(i, j) - dist(i, k)
      value = np.log1p(np.exp(diff)) if margin is None else max(0.0, diff + margin)
      best = value if best is None else max(best, value)
    if best is not None:
      per_anchor.append(best)
  return float(np.mean(per_anchor)) if per_anchor else 0.0


def _numeric_grad(f, x, h=1e-5):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


@pytest.mark.parametrize("margin", [0.3, 0.0, 1.0, None])
def test_matches_brute_force_pk_batch(margin):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 3)  # P=4, K=3
  rng.shuffle(labels)
  feats = rng.normal(size=(12, 6)).astype(np.float32)
  got = batch_hard_triplet_loss(jnp.asarray(feats), jnp.asarray(labels), margin)
  np.testing.assert_allclose(got, _reference_loss(feats, labels, margin), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("margin", [0.3, None])
def test_gradient_matches_finite_differences(margin):
  rng = np.random.default_rng(1)
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  feats = rng.normal(size=(7, 3))
  got = jax.grad(batch_hard_triplet_loss)(jnp.asarray(feats, jnp.float32), labels, margin)
  want = _numeric_grad(lambda f: _reference_loss(f, labels, margin), feats)
  np.testing.assert_allclose(got, want, atol=2e-3)
  assert np.abs(want).max() > 0.05  # the check is not vacuous


def test_single_image_identities_are_excluded():
  rng = np.random.default_rng(2)
  labels = np.array([0, 0, 1, 2, 2, 3, 4])  # ids 1, 3, 4 have one image each
  feats = rng.normal(size=(7, 5)).astype(np.float32)
  for margin in (0.3, None):
    got = batch_hard_triplet_loss(jnp.asarray(feats), labels, margin)
    np.testing.assert_allclose(got, _reference_loss(feats, labels, margin), rtol=1e-5)
  # Only anchors 0, 1, 3, 4 count (the mean over those four is checked above); the
  # anchors without a positive must not make the gradient NaN.
  grads = jax.grad(batch_hard_triplet_loss)(jnp.asarray(feats), labels, 10.0)
  assert np.all(np.isfinite(grads))


def test_single_identity_batch_has_zero_loss_and_gradient():
  feats = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)
  labels = np.zeros(4, np.int32)
  for margin in (0.3, None):
    assert float(batch_hard_triplet_loss(feats, labels, margin)) == 0.0
    grads = jax.grad(batch_hard_triplet_loss)(feats, labels, margin)
    np.testing.assert_array_equal(grads, 0.0)


def test_all_single_image_identities_have_zero_loss():
  feats = jnp.asarray(np.random.default_rng(4).normal(size=(5, 3)), jnp.float32)
  assert float(batch_hard_triplet_loss(feats, np.arange(5), 0.3)) == 0.0


@pytest.mark.parametrize("margin", [0.3, None])
def test_exact_duplicates_value_and_finite_gradients(margin):
  # Values exactly representable in float32, so the Gram-matrix expansion is exact and
  # duplicate distances are exactly 0 (clamped to 1e-6) as in the reference.
  base = np.array([[1.0, 0.5, -2.0], [0.25, 1.5, 1.0], [-1.0, 0.0, 0.75]], np.float32)
  feats = np.stack([base[0], base[0], base[1], base[1], base[0], base[2], base[2]])
  labels = np.array([0, 0, 1, 1, 2, 3, 3])  # same-id and cross-id duplicates
  got = batch_hard_triplet_loss(jnp.asarray(feats), labels, margin)
  np.testing.assert_allclose(got, _reference_loss(feats, labels, margin), rtol=1e-6)
  grads = jax.grad(batch_hard_triplet_loss)(jnp.asarray(feats), labels, margin)
  assert np.all(np.isfinite(grads))


def test_random_duplicates_have_finite_gradients():
  rng = np.random.default_rng(5)
  # Large norms (a shared offset) and small inter-identity distances (~0.2): the Gram
  # expansion cancels, so duplicate distances come out as rounding noise, not exactly 0.
  offset = rng.normal(size=(1, 64)) * 30.0
  base = (offset + rng.normal(size=(4, 64)) * 0.02).astype(np.float32)
  feats = jnp.asarray(np.repeat(base, 4, axis=0))  # every identity's images identical
  labels = np.repeat(np.arange(4), 4)
  for margin in (0.3, None):
    value, grads = jax.value_and_grad(batch_hard_triplet_loss)(feats, labels, margin)
    assert np.isfinite(value) and np.all(np.isfinite(grads))
    want = _reference_loss(base.repeat(4, 0), labels, margin)
    assert want > 0.03
    # Centring removes the offset (without it the error here was 1.6e-2, |x| ~ 240);
    # what is left is sqrt(rounding noise) ~ 3e-5 on the duplicate distances.
    np.testing.assert_allclose(value, want, atol=1e-4)


def test_distances_match_numpy_and_diagonal_is_clamped_zero():
  x = np.random.default_rng(6).normal(size=(5, 7)).astype(np.float32)
  got = euclidean_distances(jnp.asarray(x))
  want = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(np.diag(got), np.float32(1e-6))


def test_bfloat16_features_are_computed_in_float32():
  x = np.random.default_rng(7).normal(size=(6, 4)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  got = batch_hard_triplet_loss(jnp.asarray(x, jnp.bfloat16), labels, 0.3)
  assert got.dtype == jnp.float32
  xb = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(got, _reference_loss(xb, labels, 0.3), rtol=1e-5)


def test_bad_shapes_and_margin_raise():
  with pytest.raises(ValueError, match="features must be"):
    batch_hard_triplet_loss(jnp.zeros((4,)), jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="labels must be"):
    batch_hard_triplet_loss(jnp.zeros((4, 2)), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="margin"):
    batch_hard_triplet_loss(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), -0.1)
