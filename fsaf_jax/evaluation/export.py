"""Serialised feature extractor: `jax.export` with the weights closed over.

`export_extractor` lowers the embedding function (uint8 images [b, H, W, 3] ->
L2-normalised float32 embeddings [b, C], flip averaging and compute dtype as chosen)
to StableHLO with a *symbolic* batch dimension `b` and the model's variables embedded
as constants, and writes the serialised bytes to a file. `exported.load_exported`
reads the file back and returns a callable that needs neither the model code nor the
variables: only JAX. The serialisation is stable across JAX versions within the
`jax.export` compatibility window (see the JAX export docs).

  export_extractor(model, variables, "fsaf.jaxexport", image_size=(256, 128))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from fsaf_jax.evaluation.extractor import make_host_embed_fn


def export_embed_fn(
  model: Any,
  variables: Mapping[str, Any],
  *,
  image_size: tuple[int, int],
  flip: bool = False,
  dtype: Any = None,
  platforms: Sequence[str] | None = None,
) -> jax.export.Exported:
  """Exports `images uint8 [b, H, W, 3] -> embeddings float32 [b, C]`.

  Args:
    model: the FSAF module.
    variables: its {'params', 'batch_stats'}; fetched to the host and closed over.
    image_size: (H, W) the exported function accepts.
    flip: flip averaging (as `make_extractor`).
    dtype: compute dtype, None = the model's own.
    platforms: platforms to lower for (e.g. ('cpu', 'cuda', 'tpu')); None = the
      default backend.

  Returns:
    The `jax.export.Exported`, batch dimension symbolic ('b').
  """
  h, w = image_size
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {h}, {w}, 3"), np.uint8)
  fn = jax.jit(make_host_embed_fn(model, variables, flip=flip, dtype=dtype))
  return jax.export.export(fn, platforms=platforms)(spec)


def export_extractor(
  model: Any,
  variables: Mapping[str, Any],
  path: str | os.PathLike,
  *,
  image_size: tuple[int, int],
  flip: bool = False,
  dtype: Any = None,
  platforms: Sequence[str] | None = None,
) -> jax.export.Exported:
  """`export_embed_fn(...)`, serialised to `path` (bytes). Returns the Exported."""
  exported = export_embed_fn(
    model, variables, image_size=image_size, flip=flip, dtype=dtype, platforms=platforms
  )
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(bytes(exported.serialize()))
  return exported
