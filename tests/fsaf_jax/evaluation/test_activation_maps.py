"""Tests of `activation_maps` against NumPy references of torchreid's method."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from fsaf_jax.evaluation import activation_maps
from fsaf_jax.models import registry

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def reference_map(feature_map):
  """torchreid: sum of squares over channels, L2-normalised over positions, min-max."""
  energy = (feature_map.astype(np.float64) ** 2).sum(-1)
  energy = energy / np.linalg.norm(energy)
  return (energy - energy.min()) / (energy.max() - energy.min() + 1e-12)


def test_maps_at_the_feature_size_equal_the_reference():
  rng = np.random.default_rng(0)
  feature_map = rng.normal(size=(3, 4, 2, 5)).astype(np.float32)
  got = np.asarray(activation_maps.activation_maps(jnp.asarray(feature_map), (4, 2)))
  for i in range(3):
    np.testing.assert_allclose(got[i], reference_map(feature_map[i]), atol=1e-5)


def test_upsampling_is_bilinear_and_keeps_the_range():
  # A map rising left to right stays monotone and spans [0, 1] after upsampling.
  feature_map = np.zeros((1, 2, 2, 1), np.float32)
  feature_map[0, :, 1, 0] = 1.0
  got = np.asarray(activation_maps.activation_maps(jnp.asarray(feature_map), (8, 4)))[0]
  assert got.shape == (8, 4) and got.min() == 0.0 and abs(got.max() - 1.0) < 1e-6
  assert np.all(np.diff(got, axis=1) >= 0) and np.allclose(got[0], got[-1])


def test_model_maps_use_the_last_feature_map():
  config = tiny.get_config()
  model = registry.create_model(config.model, 5)
  h, w = config.input.image_size
  variables = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0), jnp.zeros((1, h, w, 3))
  )
  images = np.random.default_rng(1).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
  got = activation_maps.make_activation_maps(model, image_size=(h, w))(variables, images)
  x = (images.astype(np.float32) / 255.0 - MEAN) / STD
  conv5 = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)["conv5"])(variables, x))
  want = np.asarray(activation_maps.activation_maps(jnp.asarray(conv5), (h, w)))
  assert got.shape == (2, h, w)
  np.testing.assert_allclose(got, want, atol=1e-4)
  small = np.stack([reference_map(m) for m in conv5])
  # Upsampled from conv5's grid: the block means of the map follow the reference.
  fh, fw = conv5.shape[1:3]
  assert np.corrcoef(got.reshape(2, fh, h // fh, fw, w // fw).mean((2, 4)).ravel(),
                     small.ravel())[0, 1] > 0.9  # fmt: skip


def test_overlay_mixes_image_and_jet():
  images = np.full((1, 2, 2, 3), 100, np.uint8)
  maps = np.zeros((1, 2, 2), np.float32)  # jet(0) = dark blue (0, 0, 127.5)
  got = activation_maps.overlay(images, maps)
  np.testing.assert_array_equal(got[0, 0, 0], np.round([60, 60, 60 + 0.4 * 127.5]))
