"""The folded BatchNorm / InstanceNorm against a float64 NumPy reference (values and the
closed-form gradient) and against Flax's `nn.BatchNorm` / `nn.InstanceNorm` (variables,
running averages, dtypes), whose drop-in replacements they are."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.norm import BatchNorm, InstanceNorm

EPS = 1e-5


def _np_norm(x, axes, scale, bias, eps=EPS):
  """float64 (x - mean) / sqrt(var + eps) * scale + bias, statistics over `axes`."""
  x = x.astype(np.float64)
  mean = x.mean(axes, keepdims=True)
  var = x.var(axes, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_norm_grad(x, dy, axes, scale, eps=EPS):
  """The textbook batch-statistics gradient: dx = a / m (m dy - sum dy - xhat sum(dy xhat)),
  dscale = sum(dy xhat), dbias = sum(dy) (sums over `axes`, then over the rest for the
  per-channel parameters)."""
  x, dy = x.astype(np.float64), dy.astype(np.float64)
  m = np.prod([x.shape[a] for a in axes])
  mean = x.mean(axes, keepdims=True)
  inv = 1 / np.sqrt(x.var(axes, keepdims=True) + eps)
  xhat = (x - mean) * inv
  sum_dy = dy.sum(axes, keepdims=True)
  sum_dy_xhat = (dy * xhat).sum(axes, keepdims=True)
  dx = scale * inv / m * (m * dy - sum_dy - xhat * sum_dy_xhat)
  channel_axes = tuple(range(x.ndim - 1))
  return dx, (dy * xhat).sum(channel_axes), dy.sum(channel_axes)


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  # An offset of 4 standard deviations: the fold's x * a - mean * a must not cancel badly.
  x = rng.normal(4.0, 1.0, (4, 5, 3, 6)).astype(np.float32) * rng.uniform(0.5, 3, 6).astype(
    np.float32
  )
  dy = rng.normal(0, 1, x.shape).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, 6).astype(np.float32)
  bias = rng.normal(0, 0.5, 6).astype(np.float32)
  return x, dy, scale, bias


def _apply(module, params, stats, x, **kw):
  variables = {"params": params} | ({"batch_stats": stats} if stats is not None else {})
  return module.apply(variables, x, mutable=["batch_stats"] if stats is not None else False, **kw)


def test_batch_norm_train_values_and_gradient_match_numpy(data):
  x, dy, scale, bias = data
  module = BatchNorm(use_running_average=False, epsilon=EPS)
  stats = {"mean": jnp.zeros(6), "var": jnp.ones(6)}

  def f(x, scale, bias):
    y, _ = _apply(module, {"scale": scale, "bias": bias}, stats, x)
    return y

  y, vjp = jax.vjp(f, x, scale, bias)
  np.testing.assert_allclose(y, _np_norm(x, (0, 1, 2), scale, bias), rtol=1e-5, atol=2e-5)
  for got, want in zip(vjp(dy), _np_norm_grad(x, dy, (0, 1, 2), scale), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_instance_norm_values_and_gradient_match_numpy(data):
  x, dy, scale, bias = data
  module = InstanceNorm(epsilon=EPS)

  def f(x, scale, bias):
    return module.apply({"params": {"scale": scale, "bias": bias}}, x)

  y, vjp = jax.vjp(f, x, scale, bias)
  np.testing.assert_allclose(y, _np_norm(x, (1, 2), scale, bias), rtol=1e-5, atol=2e-5)
  for got, want in zip(vjp(dy), _np_norm_grad(x, dy, (1, 2), scale), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_bias", [True, False])
def test_batch_norm_is_a_drop_in_for_flax(data, use_bias):
  """Same variables, train output, running-average update and eval output as nn.BatchNorm."""
  x, _, scale, bias = data
  kw = dict(momentum=0.9, epsilon=EPS, use_bias=use_bias)
  ours, flax_bn = BatchNorm(**kw), nn.BatchNorm(**kw)
  init = lambda m: m.init(jax.random.key(0), x, use_running_average=False)
  assert jax.tree.map(np.shape, init(ours)) == jax.tree.map(np.shape, init(flax_bn))
  for got, want in zip(jax.tree.leaves(init(ours)), jax.tree.leaves(init(flax_bn)), strict=True):
    np.testing.assert_array_equal(got, want)  # ones / zeros, untouched by initialisation

  params = {"scale": scale} | ({"bias": bias} if use_bias else {})
  stats = {"mean": jnp.full(6, 0.5), "var": jnp.full(6, 2.0)}
  (y, new), (y_ref, new_ref) = (
    _apply(m, params, stats, x, use_running_average=False) for m in (ours, flax_bn)
  )
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5)
  for key in ("mean", "var"):
    np.testing.assert_allclose(new["batch_stats"][key], new_ref["batch_stats"][key], rtol=1e-5)
  # Momentum 0.9 towards the batch statistics (Flax's convention), checked by hand.
  np.testing.assert_allclose(
    new["batch_stats"]["mean"], 0.9 * 0.5 + 0.1 * x.mean((0, 1, 2)), rtol=1e-5
  )
  eval_stats = new["batch_stats"]
  y_eval, y_eval_ref = (
    m.apply({"params": params, "batch_stats": eval_stats}, x, use_running_average=True)
    for m in (ours, flax_bn)
  )
  np.testing.assert_allclose(y_eval, y_eval_ref, rtol=1e-5, atol=2e-5)


def test_instance_norm_is_a_drop_in_for_flax(data):
  x, _, scale, bias = data
  ours, flax_in = InstanceNorm(epsilon=EPS), nn.InstanceNorm(epsilon=EPS)
  assert jax.tree.map(np.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
    np.shape, flax_in.init(jax.random.key(0), x)
  )
  variables = {"params": {"scale": scale, "bias": bias}}
  np.testing.assert_allclose(
    ours.apply(variables, x), flax_in.apply(variables, x), rtol=1e-5, atol=2e-5
  )
  assert InstanceNorm().epsilon == nn.InstanceNorm().epsilon


def test_defaults_are_flax_defaults():
  for name in ("epsilon", "momentum", "use_bias", "use_scale", "dtype", "param_dtype"):
    assert getattr(BatchNorm(), name) == getattr(nn.BatchNorm(), name), name
  for name in ("epsilon", "use_bias", "use_scale", "dtype", "param_dtype"):
    assert getattr(InstanceNorm(), name) == getattr(nn.InstanceNorm(), name), name


def test_init_does_not_move_running_averages(data):
  x = data[0]
  stats = BatchNorm(use_running_average=False).init(jax.random.key(0), x)["batch_stats"]
  np.testing.assert_array_equal(stats["mean"], np.zeros(6))
  np.testing.assert_array_equal(stats["var"], np.ones(6))


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_dtypes_follow_flax(data, dtype):
  """bfloat16 inputs: float32 statistics and running averages, output in `dtype` (or the
  promoted input / param dtype), as Flax's."""
  x = jnp.asarray(data[0], jnp.bfloat16)
  for ours, ref in (
    (
      BatchNorm(use_running_average=False, dtype=dtype),
      nn.BatchNorm(use_running_average=False, dtype=dtype),
    ),
    (InstanceNorm(dtype=dtype), nn.InstanceNorm(dtype=dtype)),
  ):
    v = ours.init(jax.random.key(0), x)
    (y, new), (y_ref, new_ref) = (m.apply(v, x, mutable=["batch_stats"]) for m in (ours, ref))
    assert y.dtype == y_ref.dtype
    assert jax.tree.map(lambda a: a.dtype, new) == jax.tree.map(lambda a: a.dtype, new_ref)
    np.testing.assert_allclose(
      np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=2e-2, atol=2e-2
    )
