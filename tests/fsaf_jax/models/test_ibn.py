"""IBN-a against a NumPy reference: instance stats on the first half, batch stats on the rest."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.ibn import IBN

EPS = 1e-5


def _reference(x, half, in_scale, in_bias, bn_scale, bn_bias, bn_mean=None, bn_var=None):
  """NumPy IBN: per-(sample, channel) stats for channels < half, per-channel otherwise."""
  x = x.astype(np.float64)
  out = np.empty_like(x)
  n, _, _, c = x.shape
  for i in range(n):
    for ch in range(half):
      v = x[i, :, :, ch]
      out[i, :, :, ch] = (v - v.mean()) / np.sqrt(v.var() + EPS) * in_scale[ch] + in_bias[ch]
  for ch in range(half, c):
    v = x[..., ch]
    j = ch - half
    mean = v.mean() if bn_mean is None else bn_mean[j]
    var = v.var() if bn_var is None else bn_var[j]
    out[..., ch] = (v - mean) / np.sqrt(var + EPS) * bn_scale[j] + bn_bias[j]
  return out


@pytest.fixture(params=[8, 7])
def setup(request):
  channels = request.param
  half = int(channels * 0.5)
  rng = np.random.default_rng(channels)
  x = rng.normal(1.0, 2.0, (3, 5, 4, channels)).astype(np.float32)
  model = IBN()
  variables = model.init(jax.random.key(0), x, use_running_average=False)
  p = {
    "IN": {"scale": rng.uniform(0.5, 1.5, half), "bias": rng.normal(0, 0.3, half)},
    "BN": {
      "scale": rng.uniform(0.5, 1.5, channels - half),
      "bias": rng.normal(0, 0.3, channels - half),
    },
  }
  stats = {
    "BN": {"mean": rng.normal(0, 1, channels - half), "var": rng.uniform(0.5, 2, channels - half)}
  }
  to32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
  variables = {"params": to32(p), "batch_stats": to32(stats)}
  return model, variables, x, half, p, stats


def test_param_names(setup):
  model, _, x, half, _, _ = setup
  variables = model.init(jax.random.key(0), x, use_running_average=False)
  shapes = jax.tree.map(lambda a: a.shape, variables)
  c = x.shape[-1]
  assert shapes == {
    "params": {
      "IN": {"scale": (half,), "bias": (half,)},
      "BN": {"scale": (c - half,), "bias": (c - half,)},
    },
    "batch_stats": {"BN": {"mean": (c - half,), "var": (c - half,)}},
  }


def test_train_mode_matches_reference_and_updates_running_stats(setup):
  model, variables, x, half, p, stats = setup
  y, updates = model.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  expected = _reference(
    x, half, p["IN"]["scale"], p["IN"]["bias"], p["BN"]["scale"], p["BN"]["bias"]
  )
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
  # Flax momentum 0.9 == PyTorch momentum 0.1 on the batch mean.
  batch_mean = x[..., half:].astype(np.float64).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(
    np.asarray(updates["batch_stats"]["BN"]["mean"]),
    0.9 * stats["BN"]["mean"] + 0.1 * batch_mean,
    rtol=1e-5,
    atol=1e-5,
  )


def test_eval_mode_uses_running_stats_for_bn_half_only(setup):
  model, variables, x, half, p, stats = setup
  y = model.apply(variables, x, use_running_average=True)
  expected = _reference(
    x,
    half,
    p["IN"]["scale"],
    p["IN"]["bias"],
    p["BN"]["scale"],
    p["BN"]["bias"],
    stats["BN"]["mean"],
    stats["BN"]["var"],
  )
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)


def test_degenerate_split_is_an_error():
  x = jnp.ones((1, 2, 2, 1))
  with pytest.raises(ValueError, match="ratio"):
    IBN().init(jax.random.key(0), x, use_running_average=True)


def test_gradients_match_flax_norms_on_the_two_halves(setup):
  """Values and gradients (input, all four affine params) equal those of Flax's own
  nn.InstanceNorm on the first channels and nn.BatchNorm on the rest, concatenated, the
  form the one-pass IBN replaces."""
  model, variables, x, half, _, _ = setup

  def flax_ibn(params, x):
    x_in = nn.InstanceNorm(epsilon=EPS).apply({"params": params["IN"]}, x[..., :half])
    x_bn, _ = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS).apply(
      {"params": params["BN"], "batch_stats": variables["batch_stats"]["BN"]},
      x[..., half:],
      mutable=["batch_stats"],
    )
    return jnp.concatenate([x_in, x_bn], axis=-1)

  def ours(params, x):
    y, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      use_running_average=False,
      mutable=["batch_stats"],
    )
    return y

  dy = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
  (y, vjp), (y_ref, vjp_ref) = (jax.vjp(f, variables["params"], x) for f in (ours, flax_ibn))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(vjp(dy)), jax.tree.leaves(vjp_ref(dy)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
