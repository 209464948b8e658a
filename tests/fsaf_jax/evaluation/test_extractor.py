"""Tests of the jitted batch feature extractor, on the tiny FSAF model.

References are computed independently of the extractor: `model.apply` on one image at
a time, normalised and L2-normalised with NumPy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from configs import tiny
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.models import registry

NUM_CLASSES = 5
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def setup():
  config = tiny.get_config()
  model = registry.create_model(config.model, NUM_CLASSES)
  h, w = config.input.image_size
  variables = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0), jnp.zeros((1, h, w, 3))
  )
  # Non-trivial BN statistics, so inference BN is not the identity.
  rng = np.random.default_rng(0)
  stats = jax.tree.map(
    lambda v: v + rng.uniform(0.0, 0.5, v.shape).astype(v.dtype), variables["batch_stats"]
  )
  variables = {"params": variables["params"], "batch_stats": stats}
  return model, variables, (h, w)


def _images(n, image_size, seed=0):
  h, w = image_size
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _reference_bn_feat(model, variables, images):
  """bn_feat of each image alone (batch of 1), float64 [N, C]."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["bn_feat"])
  rows = []
  for img in images:
    x = ((img.astype(np.float32) / 255.0 - MEAN) / STD)[None]
    rows.append(np.asarray(apply(variables, x), np.float64)[0])
  return np.stack(rows)


def _l2n(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_trace_padding_and_unit_norm(setup):
  model, variables, image_size = setup
  ex = extractor_lib.make_extractor(model, variables, batch_size=4, image_size=image_size)
  images = _images(10, image_size)
  feats = np.concatenate([ex(images[0:4]), ex(images[4:8]), ex(images[8:10])])
  assert ex.num_traces == 1  # three calls, the last one padded: one trace
  assert feats.shape[0] == 10 and feats.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
  ref = _l2n(_reference_bn_feat(model, variables, images))
  np.testing.assert_allclose(feats, ref, atol=2e-5)
  # The padded batch's valid rows equal the same images in a full batch.
  full = ex(np.concatenate([images[8:10], images[0:2]]))[:2]
  np.testing.assert_allclose(feats[8:10], full, atol=1e-6)
  assert ex.num_traces == 1


@pytest.mark.parametrize("use_mesh", [False, True])
def test_set_variables_reuses_the_compiled_step(setup, use_mesh):
  model, variables, image_size = setup
  mesh = Mesh(np.array(jax.devices()), ("data",)) if use_mesh else None
  batch = 4 * len(jax.devices()) if use_mesh else 4
  ex = extractor_lib.make_extractor(model, None, batch_size=batch, image_size=image_size, mesh=mesh)
  images = _images(3, image_size)
  with pytest.raises(ValueError, match="set_variables"):
    ex(images)
  rng = np.random.default_rng(2)
  moved = jax.tree.map(lambda v: v + rng.normal(0.0, 0.05, v.shape).astype(v.dtype), variables)
  got = {}
  for name, v in (("first", variables), ("moved", moved)):
    ex.set_variables({**v, "extra": {"x": np.zeros(1)}})  # other collections are dropped
    got[name] = ex(images)
    np.testing.assert_allclose(got[name], _l2n(_reference_bn_feat(model, v, images)), atol=2e-5)
  assert ex.num_traces == 1
  assert np.abs(got["first"] - got["moved"]).max() > 1e-3


def test_flip_averages_bn_feat_then_normalises(setup):
  model, variables, image_size = setup
  ex = extractor_lib.make_extractor(
    model, variables, batch_size=3, image_size=image_size, flip=True
  )
  images = _images(3, image_size, seed=1)
  feats = ex(images)
  plain = _reference_bn_feat(model, variables, images)
  mirrored = _reference_bn_feat(model, variables, images[:, :, ::-1, :])
  assert np.abs(plain - mirrored).max() > 1e-3  # the mirror really differs
  np.testing.assert_allclose(feats, _l2n((plain + mirrored) / 2), atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_bfloat16_close_to_float32(setup):
  model, variables, image_size = setup
  images = _images(6, image_size, seed=2)
  f32 = extractor_lib.make_extractor(
    model, variables, batch_size=6, image_size=image_size, dtype="float32"
  )(images)
  bf16 = extractor_lib.make_extractor(
    model, variables, batch_size=6, image_size=image_size, dtype="bfloat16"
  )(images)
  assert bf16.dtype == np.float32
  assert not np.array_equal(f32, bf16)  # bf16 compute really happened
  cosine = np.sum(f32 * bf16, axis=1)  # both unit rows
  assert cosine.min() > 0.99, cosine


def test_data_parallel_mesh_matches_single_device(setup, num_devices):
  model, variables, image_size = setup
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  batch = 2 * num_devices
  sharded = extractor_lib.make_extractor(
    model, variables, batch_size=batch, image_size=image_size, mesh=mesh
  )
  single = extractor_lib.make_extractor(model, variables, batch_size=batch, image_size=image_size)
  images = _images(batch + 3, image_size, seed=3)
  out = np.concatenate([sharded(images[:batch]), sharded(images[batch:])])
  assert sharded.num_traces == 1
  np.testing.assert_allclose(
    out, np.concatenate([single(images[:batch]), single(images[batch:])]), atol=1e-5
  )
  device_out = sharded.dispatch(images[:batch])
  assert len(device_out.sharding.device_set) == num_devices
  with pytest.raises(ValueError, match="not divisible"):
    extractor_lib.make_extractor(
      model, variables, batch_size=num_devices + 1, image_size=image_size, mesh=mesh
    )


def test_extract_features_drops_masked_rows_and_keeps_order(setup):
  model, variables, image_size = setup
  ex = extractor_lib.make_extractor(model, variables, batch_size=4, image_size=image_size)
  images = _images(7, image_size, seed=4)
  pad = np.zeros((1, *images.shape[1:]), np.uint8)
  batches = [
    {
      "image": images[:4],
      "person_id": np.array([1, 2, 3, 4]),
      "camera_id": np.array([0, 1, 0, 1]),
      "mask": np.ones(4, bool),
      "file_name": np.array([b"a.jpg", b"b.jpg", b"c.jpg", b"d.jpg"]),
    },
    {
      "image": np.concatenate([images[4:7], pad]),
      "person_id": np.array([5, 6, 7, -1]),
      "camera_id": np.array([2, 2, 3, -1]),
      "mask": np.array([True, True, True, False]),
      "file_name": np.array(["e.jpg", "f.jpg", "g.jpg", ""]),
    },
  ]
  feats, pids, camids, names = extractor_lib.extract_features(ex, batches)
  assert ex.num_traces == 1
  np.testing.assert_allclose(feats, _l2n(_reference_bn_feat(model, variables, images)), atol=2e-5)
  np.testing.assert_array_equal(pids, [1, 2, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(camids, [0, 1, 0, 1, 2, 2, 3])
  assert names.tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]


def test_bad_inputs(setup):
  model, variables, image_size = setup
  h, w = image_size
  ex = extractor_lib.make_extractor(model, variables, batch_size=2, image_size=image_size)
  with pytest.raises(ValueError, match="shape"):
    ex(np.zeros((2, h + 1, w, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    ex(np.zeros((2, h, w, 3), np.float32))
  with pytest.raises(ValueError, match="batch_size=2"):
    ex(np.zeros((3, h, w, 3), np.uint8))
  ok = {"image": np.zeros((2, h, w, 3), np.uint8), "person_id": [0, 0], "camera_id": [0, 0]}
  with pytest.raises(KeyError, match="file_name"):
    extractor_lib.extract_features(ex, [ok])
  masked = {**ok, "file_name": ["", ""], "mask": np.zeros(2, bool)}
  with pytest.raises(ValueError, match="no valid images"):
    extractor_lib.extract_features(ex, [masked])
  with pytest.raises(ValueError, match="no valid images"):
    extractor_lib.extract_features(ex, [])
