"""Checks of the arrays the evaluation functions take.

Every public evaluation entry point (`metrics.evaluate`, `metrics.evaluate_features`,
`rerank.re_ranking`, `fsaf_jax.score`) validates
its inputs here first, so that malformed input fails with an `EvaluationInputError`
naming the array and its shape instead of a crash deep inside a jitted kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fsaf_jax.core import errors


class EvaluationInputError(errors.UserError):
  """Malformed evaluation input; the message names the array and its shape."""


def id_vector(name: str, x: Any, length: int | None = None) -> np.ndarray:
  """Returns `x` as an int64 vector [n], checking that it holds integers.

  Args:
    name: the array's name, for error messages (e.g. 'query_pids').
    x: array-like of integer ids (integer dtype, or floats with integral values).
    length: the required length, or None.

  Raises:
    EvaluationInputError: not 1-D, wrong length, or non-integral values.
  """
  x = np.asarray(x)
  if x.ndim != 1:
    raise EvaluationInputError(f"{name} must be a vector [n], got shape {x.shape}.")
  if length is not None and x.shape[0] != length:
    raise EvaluationInputError(
      f"{name} has {x.shape[0]} entries but there are {length} items (shape {x.shape})."
    )
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    return x.astype(np.int64)
  if np.issubdtype(x.dtype, np.floating):
    if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
      bad = int(np.argmax(~np.isfinite(x) | (x != np.round(x))))
      raise EvaluationInputError(
        f"{name} must hold integer ids; entry {bad} is {x[bad]!r} (dtype {x.dtype})."
      )
    return x.astype(np.int64)
  raise EvaluationInputError(f"{name} must hold integer ids, got dtype {x.dtype}.")


def feature_matrix(name: str, x: Any) -> np.ndarray:
  """Returns `x` as a float32 matrix [n, d] with n, d >= 1 and only finite values.

  Raises:
    EvaluationInputError: wrong rank, empty, or NaN / inf entries (the first is named).
  """
  x = np.asarray(x)
  if x.ndim != 2:
    raise EvaluationInputError(f"{name} must be a matrix [n, dim], got shape {x.shape}.")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise EvaluationInputError(f"{name} is empty (shape {x.shape}): nothing to evaluate.")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise EvaluationInputError(f"{name} must be numeric, got dtype {x.dtype}.")
  x = x.astype(np.float32, copy=False)
  finite = np.isfinite(x)
  if not finite.all():
    row, col = np.argwhere(~finite)[0]
    num_rows = int((~finite).any(axis=1).sum())
    raise EvaluationInputError(
      f"{name} (shape {x.shape}) has non-finite values in {num_rows} rows, first at "
      f"[{row}, {col}] = {x[row, col]!r}."
    )
  return x


def feature_pair(q_feats: Any, g_feats: Any) -> tuple[np.ndarray, np.ndarray]:
  """Query and gallery features checked (`feature_matrix`) and of the same dimension.

  Returns:
    (float32 [M, D], float32 [N, D]).

  Raises:
    EvaluationInputError: as `feature_matrix`, or the dimensions differ.
  """
  q_feats = feature_matrix("query features", q_feats)
  g_feats = feature_matrix("gallery features", g_feats)
  if q_feats.shape[1] != g_feats.shape[1]:
    raise EvaluationInputError(
      f"query features {q_feats.shape} and gallery features {g_feats.shape} differ in dimension."
    )
  return q_feats, g_feats


def distance_matrix_shape(name: str, distmat: Any, num_query: int, num_gallery: int) -> None:
  """Checks that `distmat` is [num_query, num_gallery] and real-valued.

  Finiteness is checked by the kernels that read it (in one pass with the work).
  """
  shape = tuple(getattr(distmat, "shape", np.shape(distmat)))
  if len(shape) != 2:
    raise EvaluationInputError(f"{name} must be a matrix [query, gallery], got shape {shape}.")
  if shape[0] == 0 or shape[1] == 0:
    raise EvaluationInputError(f"{name} is empty (shape {shape}): no query or no gallery.")
  if shape != (num_query, num_gallery):
    raise EvaluationInputError(
      f"{name} has shape {shape} but there are {num_query} query and {num_gallery} gallery "
      "ids: expected [num_query, num_gallery]."
    )
  dtype = np.dtype(getattr(distmat, "dtype", np.float32))
  if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
    raise EvaluationInputError(f"{name} must be numeric, got dtype {dtype}.")


def query_gallery_ids(
  q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Validates the four id vectors; returns them as int64.

  Raises:
    EvaluationInputError: empty query or gallery, or lengths that disagree.
  """
  q_pids = id_vector("query_pids", q_pids)
  g_pids = id_vector("gallery_pids", g_pids)
  if q_pids.shape[0] == 0:
    raise EvaluationInputError("The query set is empty (query_pids has shape (0,)).")
  if g_pids.shape[0] == 0:
    raise EvaluationInputError("The gallery set is empty (gallery_pids has shape (0,)).")
  q_camids = id_vector("query_camids", q_camids, q_pids.shape[0])
  g_camids = id_vector("gallery_camids", g_camids, g_pids.shape[0])
  return q_pids, g_pids, q_camids, g_camids
