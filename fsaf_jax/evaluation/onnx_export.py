"""ONNX export of the feature extractor (optional extra: `requirements-onnx.txt`).

`export_onnx` converts the same embedding function as `export.export_extractor` (uint8
images [b, H, W, 3] -> L2-normalised float32 embeddings [b, C], flip averaging as
chosen) with `jax2onnx`, the batch dimension symbolic ('b') and the variables embedded
as initialisers, and writes the `.onnx` file whole. The file runs without JAX, e.g. in
`onnxruntime`:

  session = onnxruntime.InferenceSession("extractor.onnx")
  feats = session.run(None, {"images": images_uint8_nhwc})[0]        # [b, C]

Every model variant of `configs/` converts (IBN-a instance norm, BoTNet MHSA with its
relative logits, ECA, GeM, the fusion's pools) in float32 compute; a model that does not
convert fails with one line naming the reason (`OnnxExportError`).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fsaf_jax.core import errors
from fsaf_jax.core.whole_file import write_whole
from fsaf_jax.evaluation.extractor import make_host_embed_fn

ONNX_INSTALL = "pip install -r requirements-onnx.txt"
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


class OnnxExportError(errors.UserError):
  """The extractor cannot be exported to ONNX (extra missing, or a model that does not
  convert): the message says which."""


def import_jax2onnx() -> Any:
  """The `jax2onnx` module; OnnxExportError (saying how to install the extra) without it."""
  try:
    import jax2onnx  # noqa: PLC0415 (lazy: an optional extra, only this export needs it)
  except ImportError as e:
    raise OnnxExportError(
      f"--onnx needs the optional ONNX extra (jax2onnx, onnx): install it with `{ONNX_INSTALL}`"
    ) from e
  return jax2onnx


def export_onnx(
  model: Any,
  variables: Mapping[str, Any],
  path: str | os.PathLike,
  *,
  image_size: tuple[int, int],
  flip: bool = False,
  dtype: Any = None,
) -> int:
  """Writes the extractor `images uint8 [b, H, W, 3] -> embeddings float32 [b, C]` as ONNX.

  Args:
    model: the FSAF module.
    variables: its {'params', 'batch_stats'}; fetched to the host and embedded.
    path: the `.onnx` file to write (whole or not at all).
    image_size: (H, W) the exported graph accepts.
    flip: flip averaging (as `make_extractor`).
    dtype: compute dtype, None = the model's own.

  Returns:
    The size of the written file in bytes.

  Raises:
    OnnxExportError: the extra is not installed, or jax2onnx cannot convert the model
      (the message names jax2onnx's reason).
  """
  jax2onnx = import_jax2onnx()
  embed = make_host_embed_fn(model, variables, flip=flip, dtype=dtype)
  h, w = image_size
  spec = jax.ShapeDtypeStruct(("b", h, w, 3), np.uint8)
  try:
    # jax2onnx prints debugging lines of its own on stdout: kept off the console.
    with contextlib.redirect_stdout(io.StringIO()):
      proto = jax2onnx.to_onnx(
        embed,
        [spec],
        model_name="fsaf_extractor",
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
      )
  except Exception as e:  # the converter raises many types for an op it lacks
    raise OnnxExportError(
      f"jax2onnx cannot convert this model to ONNX ({type(e).__name__}: "
      f"{errors.one_line(str(e))[:300]})",
      hint="export with --export (jax.export) instead, or use a float32 model "
      "(--config.model.dtype=float32)",
    ) from e
  data = proto.SerializeToString()
  write_whole(path, data)
  return len(data)
