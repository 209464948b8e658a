"""Jitted batch feature extractor: uint8 images in, L2-normalised embeddings out.

The test-time embedding is the post-BNNeck feature `bn_feat`,
L2-normalised. With flip averaging, `bn_feat` of the image and of its horizontal
mirror are averaged *before* the L2 normalisation (as fast-reid / torchreid do), so
the result is still a unit vector.

Batches have a fixed size: a shorter (last) batch is zero-padded on the host to
`batch_size` and the padded rows are dropped from the result, so the step is traced
and compiled once per extractor. The variables are an argument of the jitted step,
not constants of it: `Extractor.set_variables` swaps in other variables of the same
shapes (the training loop's current state at each evaluation) without a new compile.
With a mesh, the batch is sharded over its `'data'` axis and the variables are
replicated, so the same code runs on one CPU, on GPUs and on TPU pods (multi-host: each
process passes its own host-local batch).

Typical use:

  extractor = make_extractor(model, variables, batch_size=128, image_size=(256, 128))
  feats, pids, camids, names = extract_features(extractor, eval_batches)
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsaf_jax.core.compiler_options import inference_compiler_options
from fsaf_jax.models.preprocessing import normalize_images

DATA_AXIS = "data"
_L2_EPS = 1e-12  # as torch.nn.functional.normalize

EmbedFn = Callable[[Any, jax.Array], jax.Array]


def l2_normalize(x: jax.Array, eps: float = _L2_EPS) -> jax.Array:
  """Rows of `x` [N, C] divided by their L2 norm (clamped below at `eps`)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


def _with_dtype(model: nn.Module, dtype: Any) -> nn.Module:
  """`model` with compute dtype `dtype` (params stay in their own dtype)."""
  if dtype is None:
    return model
  if not hasattr(model, "dtype"):
    raise ValueError(
      f"dtype={dtype!r} requested but {type(model).__name__} has no `dtype` field; "
      "pass dtype=None to use the model as built"
    )
  return model.clone(dtype=jnp.dtype(dtype))


def make_embed_fn(model: nn.Module, *, flip: bool = False, dtype: Any = None) -> EmbedFn:
  """Pure embedding function `(variables, images) -> embeddings`, not jitted.

  Args:
    model: the FSAF module (`fsaf_jax.models.registry.create_model`); its output dict
      must contain `'bn_feat'` [N, C].
    flip: average `bn_feat` of each image and of its horizontal mirror, then
      L2-normalise.
    dtype: compute dtype ('float32', 'bfloat16', a jnp dtype), or None for the
      model's own. Parameters keep their stored dtype; the output is float32.

  Returns:
    `fn(variables, images)`: `variables` the model's {'params', 'batch_stats'};
    `images` uint8 [N, H, W, 3]; returns float32 [N, C], rows of unit L2 norm.
  """
  model = _with_dtype(model, dtype)
  compute_dtype = jnp.dtype(getattr(model, "dtype", jnp.float32))

  def bn_feat(variables, x):
    out = model.apply(variables, x, train=False)
    if "bn_feat" not in out:
      raise KeyError(f"model output has no 'bn_feat'; keys: {sorted(out)}")
    return out["bn_feat"].astype(jnp.float32)

  def embed(variables, images):
    x = normalize_images(images, compute_dtype)
    feat = bn_feat(variables, x)
    if flip:
      feat = 0.5 * (feat + bn_feat(variables, x[:, :, ::-1, :]))
    return l2_normalize(feat)

  return embed


class Extractor:
  """Fixed-batch jitted feature extractor (built by `make_extractor`).

  Calling it with host uint8 images [n, H, W, 3], n <= `batch_size`, returns numpy
  float32 embeddings [n, C]. `dispatch` starts the same computation without waiting
  and returns the device array [batch_size, C] (padded rows included) so a caller
  can overlap host work with the device; `fetch` turns that into host rows.

  Attributes:
    batch_size: host batch size every call is padded to.
    image_size: (H, W) the images must have.
    flip: whether flip averaging is on.
    dtype: the compute dtype.
    mesh: the mesh the batch is sharded over, or None (default device).
    num_traces: how many times the step was traced (1 after any number of calls).
    embed_fn: the pure `(variables, images) -> embeddings` function (for export).
    compiler_options: the XLA options the step is compiled with (see
      `fsaf_jax.core.compiler_options`; None off the CPU).
    variables: the variables (replicated over the mesh when there is one), or None
      until `set_variables` is called.
  """

  def __init__(
    self,
    embed_fn: EmbedFn,
    variables: Mapping[str, Any] | None,
    *,
    batch_size: int,
    image_size: tuple[int, int],
    flip: bool,
    dtype: Any,
    mesh: Mesh | None,
  ):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(image_size) != 2 or min(image_size) <= 0:
      raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size}")
    self.embed_fn = embed_fn
    self.batch_size = int(batch_size)
    self.image_size = (int(image_size[0]), int(image_size[1]))
    self.flip = flip
    self.dtype = dtype
    self.mesh = mesh
    self.num_traces = 0

    def step(variables, images):
      self.num_traces += 1  # Python side effect: runs only while tracing.
      return embed_fn(variables, images)

    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    # Per-backend XLA options (CPU: YNNPACK fuses convs with their epilogues).
    self.compiler_options = inference_compiler_options(platform)
    if mesh is None:
      self._batch_sharding = None
      self._variables_sharding = None
      self._step = jax.jit(step, compiler_options=self.compiler_options)
    else:
      if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh needs a {DATA_AXIS!r} axis, has {mesh.axis_names}")
      data_size = mesh.shape[DATA_AXIS]
      global_batch = self.batch_size * jax.process_count()
      if global_batch % data_size:
        raise ValueError(
          f"batch_size {self.batch_size} x {jax.process_count()} process(es) is not "
          f"divisible by the mesh's {DATA_AXIS!r} axis size {data_size}"
        )
      self._batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
      replicated = NamedSharding(mesh, PartitionSpec())
      self._variables_sharding = replicated
      self._step = jax.jit(
        step,
        in_shardings=(replicated, self._batch_sharding),
        out_shardings=self._batch_sharding,
        compiler_options=self.compiler_options,
      )
    self.variables = None
    if variables is not None:
      self.set_variables(variables)

  def set_variables(self, variables: Mapping[str, Any]) -> None:
    """Embeds with `variables` from now on: {'params', 'batch_stats'} (other collections
    are dropped); host or device arrays, put on the device(s) here. Variables of the
    shapes and dtypes of the first ones reuse the compiled step."""
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    if self._variables_sharding is None:
      self.variables = jax.device_put(variables)
    else:
      self.variables = jax.device_put(variables, self._variables_sharding)

  def _check(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    h, w = self.image_size
    if images.ndim != 4 or images.shape[1:] != (h, w, 3):
      raise ValueError(
        f"expected images of shape [n, {h}, {w}, 3] (image_size={self.image_size}), "
        f"got {images.shape}"
      )
    if images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images, got dtype {images.dtype}")
    n = images.shape[0]
    if not 0 < n <= self.batch_size:
      raise ValueError(f"batch has {n} images; expected 1..batch_size={self.batch_size}")
    return images

  def dispatch(self, images: np.ndarray) -> jax.Array:
    """Starts embedding `images` uint8 [n, H, W, 3]; returns [batch_size, C] (async)."""
    if self.variables is None:
      raise ValueError("the extractor has no variables: call set_variables first")
    images = self._check(images)
    n = images.shape[0]
    if n < self.batch_size:
      pad = np.zeros((self.batch_size - n, *images.shape[1:]), np.uint8)
      images = np.concatenate([images, pad])
    if self._batch_sharding is None:
      images = jax.device_put(images)
    else:
      images = jax.make_array_from_process_local_data(self._batch_sharding, images)
    return self._step(self.variables, images)

  def fetch(self, feats: jax.Array, n: int | None = None) -> np.ndarray:
    """Host-local rows of a `dispatch` result, the first `n` (default all)."""
    if self.mesh is not None:
      feats = multihost_utils.global_array_to_host_local_array(
        feats, self.mesh, PartitionSpec(DATA_AXIS)
      )
    return np.asarray(feats)[: self.batch_size if n is None else n]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Embeddings float32 [n, C] (unit rows) of host uint8 images [n, H, W, 3]."""
    images = self._check(images)
    return self.fetch(self.dispatch(images), images.shape[0])


def make_host_embed_fn(
  model: Any, variables: Mapping[str, Any], *, flip: bool = False, dtype: Any = None
) -> Callable[[jax.Array], jax.Array]:
  """`make_embed_fn` closed over a host copy of `variables`' params and batch_stats, the
  form a serialised extractor embeds: images uint8 [b, H, W, 3] -> embeddings [b, C]."""
  embed = make_embed_fn(model, flip=flip, dtype=dtype)
  host_vars = jax.device_get({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
  return lambda images: embed(host_vars, images)


def make_extractor(
  model: nn.Module,
  variables: Mapping[str, Any] | None,
  *,
  batch_size: int,
  image_size: tuple[int, int],
  flip: bool = False,
  dtype: Any = None,
  mesh: Mesh | None = None,
) -> Extractor:
  """Builds the jitted fixed-batch feature extractor.

  Args:
    model: the FSAF module; `model.apply(variables, x, train=False)['bn_feat']`.
    variables: {'params', 'batch_stats'} (a trained or freshly initialised model), or
      None to set them later (`Extractor.set_variables`).
    batch_size: host batch size; shorter batches are padded to it (one compile).
      With a mesh, `batch_size * process_count` must divide by the 'data' axis.
    image_size: (H, W) of the input images.
    flip: flip averaging (see module docstring).
    dtype: compute dtype ('float32' / 'bfloat16'), None = the model's own.
    mesh: shard the batch over this mesh's 'data' axis (variables replicated);
      None = the default device.

  Returns:
    An `Extractor`: `extractor(images uint8 [n, H, W, 3]) -> float32 [n, C]`.
  """
  return Extractor(
    make_embed_fn(model, flip=flip, dtype=dtype),
    variables,
    batch_size=batch_size,
    image_size=image_size,
    flip=flip,
    dtype=dtype,
    mesh=mesh,
  )


def _as_str(name: Any) -> str:
  return name.decode("utf-8") if isinstance(name, bytes | np.bytes_) else str(name)


def extract_features(
  extractor: Extractor, batches: Iterable[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Embeds every valid row of an evaluation pipeline's batches.

  One batch stays in flight on the device while the next is prepared on the host.

  Args:
    extractor: from `make_extractor`.
    batches: dicts with `image` uint8 [B, H, W, 3] (B <= extractor.batch_size),
      `person_id` [B], `camera_id` [B], `file_name` [B] (str or bytes) and
      optionally `mask` bool [B] (False = padding; missing = all valid).

  Returns:
    (feats float32 [N, C] with unit rows, pids int32 [N], camids int32 [N],
    file_names str [N]) over the N valid rows, in batch order.
  """
  feats, pids, camids, names = [], [], [], []
  pending = collections.deque()

  def collect():
    device_feats, keep = pending.popleft()
    feats.append(extractor.fetch(device_feats, len(keep))[keep])

  for i, batch in enumerate(batches):
    missing = {"image", "person_id", "camera_id", "file_name"} - set(batch)
    if missing:
      raise KeyError(f"evaluation batch {i} lacks {sorted(missing)}; has {sorted(batch)}")
    n = len(batch["image"])
    keep = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(n, bool)
    if keep.shape != (n,):
      raise ValueError(f"batch {i}: mask shape {keep.shape} != ({n},)")
    pending.append((extractor.dispatch(batch["image"]), keep))
    pids.append(np.asarray(batch["person_id"])[keep])
    camids.append(np.asarray(batch["camera_id"])[keep])
    names.extend(_as_str(s) for s in np.asarray(batch["file_name"])[keep])
    if len(pending) > 1:
      collect()
  while pending:
    collect()
  if not feats or not sum(len(f) for f in feats):
    raise ValueError("no valid images in the evaluation batches (empty or all masked)")
  return (
    np.concatenate(feats).astype(np.float32),
    np.concatenate(pids).astype(np.int32),
    np.concatenate(camids).astype(np.int32),
    np.asarray(names, dtype=str),
  )
