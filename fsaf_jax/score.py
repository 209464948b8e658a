r"""Scores precomputed ReID features with the Market-1501 protocol.

  python -m fsaf_jax.score FEATURES.npz [--metric=cosine|euclidean] [--rerank] \
      [--rerank_squared] [--json=OUT] [--max_rank=50]
  python -m fsaf_jax.score QUERY.npz GALLERY.npz [...]

FEATURES.npz holds `query_feats` [M, D], `gallery_feats` [N, D], `query_pids` [M],
`gallery_pids` [N], `query_camids` [M], `gallery_camids` [N] (written by any code:
features from fast-reid / torchreid models score the same way). QUERY.npz and
GALLERY.npz are two files as `python -m fsaf_jax.extract` writes them (`feats`,
`pids`, `camids`, `file_names`: run it once on the query folder and once on the
gallery folder). Prints the metrics table (Rank-1/5/10, mAP, mINP, valid queries), with
a second row after k-reciprocal re-ranking with `--rerank`; `--json` writes the same
numbers (fractions, full CMC) as JSON. Re-ranking uses the distances as given (BoT's
convention); `--rerank_squared` squares them first, as fast-reid's and torchreid's
`re_ranking` do, which reproduces their re-ranked figures (`rerank.re_ranking`'s
`squared`).

Scoring is `fsaf_jax.evaluation.scoring.score_features`, as in training and eval.py;
the table is `report.metrics_table`.

Bad input (not a .npz file, missing key, mismatched lengths, NaN features, empty sets,
no query with a positive, a `--json` path that cannot be written) ends with a one-line
`ERROR:` naming the file, array and shape, exit status 2, before any scoring. Queries
without a positive in the gallery are skipped with a warning giving the count;
degenerate features (all-zero rows, all rows identical) are scored with a warning.
"""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags

from data_pipelines import errors, logs, paths
from fsaf_jax.core import host_allocator
from fsaf_jax.evaluation import distance, inputs, metrics, report, scoring
from fsaf_jax.evaluation.settings import EvalSettings

FEATURE_KEYS = ("query_feats", "gallery_feats")
ID_KEYS = ("query_pids", "gallery_pids", "query_camids", "gallery_camids")
REQUIRED_KEYS = FEATURE_KEYS + ID_KEYS
# One image set, as `python -m fsaf_jax.extract` writes it (also `file_names`).
EXTRACT_KEYS = ("feats", "pids", "camids")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def read_npz(path: str, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Arrays of the .npz file `path`: `keys` (those present), or all of them.

  `keys=()` reads nothing: `npz_keys` uses it for the checks of the file alone.

  Raises:
    EvaluationInputError: in one line naming `path`: missing, a directory, empty
      (0 bytes), a .npy array instead of a .npz archive, or not readable as .npz.
  """
  if os.path.isdir(path):
    raise inputs.EvaluationInputError(f"{path} is a directory, not a .npz file")
  if not os.path.exists(path):
    raise inputs.EvaluationInputError(f"Cannot read {path}: no such file")
  if os.path.getsize(path) == 0:
    raise inputs.EvaluationInputError(
      f"Cannot read {path} as a .npz file: it is empty (0 bytes; was its writing interrupted?)"
    )
  with open(path, "rb") as f:
    magic = f.read(6)
  if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
    raise inputs.EvaluationInputError(
      f"Cannot read {path} as a .npz file: no zip header (it starts with {magic!r})"
    )
  try:
    loaded = np.load(path, allow_pickle=False)
  except _READ_ERRORS as e:
    raise inputs.EvaluationInputError(
      f"Cannot read {path} as a .npz file: {errors.one_line(str(e))}"
    ) from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise inputs.EvaluationInputError(
      f"{path} is a .npy file (one array of shape {np.shape(loaded)}), not a .npz archive of "
      "named arrays: save with np.savez(path, query_feats=..., gallery_feats=..., ...)"
    )
  with loaded as npz:
    names = [k for k in (npz.files if keys is None else keys) if k in npz.files]
    try:
      return {k: npz[k] for k in names}
    except _READ_ERRORS as e:
      raise inputs.EvaluationInputError(
        f"Cannot read {path} as a .npz file: {errors.one_line(str(e))}"
      ) from e


def npz_keys(path: str) -> list[str]:
  """Names of the arrays in the .npz file `path` (EvaluationInputError as `read_npz`)."""
  read_npz(path, keys=())
  with np.load(path, allow_pickle=False) as npz:
    return list(npz.files)


def load_features(path: str) -> dict[str, np.ndarray]:
  """Reads and checks a features npz holding both the query and the gallery set.

  Returns:
    The six arrays (features float32 [M, D] / [N, D], ids int64), validated.

  Raises:
    EvaluationInputError: unreadable file, missing keys (an `extract` file, which holds
      one set, is named as such), wrong shapes or lengths, non-finite features, empty
      sets.
  """
  present = set(npz_keys(path))
  missing = [k for k in REQUIRED_KEYS if k not in present]
  if missing and set(EXTRACT_KEYS) <= present and not present & set(REQUIRED_KEYS):
    raise inputs.EvaluationInputError(
      f"{path} holds one image set (feats, pids, camids: as written by "
      "`python -m fsaf_jax.extract`), not a query and a gallery set",
      hint="extract the query and the gallery folders into two files and run "
      "`python -m fsaf_jax.score QUERY.npz GALLERY.npz`",
    )
  if missing:
    raise inputs.EvaluationInputError(
      f"{path}: missing key(s) {', '.join(missing)}; the file has "
      f"{', '.join(sorted(present)) or 'no arrays'}. Expected {', '.join(REQUIRED_KEYS)}."
    )
  return check_features(read_npz(path, REQUIRED_KEYS), where=path)


def load_query_gallery(query_path: str, gallery_path: str) -> dict[str, np.ndarray]:
  """Reads and checks two files of `python -m fsaf_jax.extract` (query, gallery).

  Each holds `feats` [n, D], `pids` [n], `camids` [n] (and `file_names`).

  Returns:
    The six arrays of `load_features`, validated.

  Raises:
    EvaluationInputError: as `load_features`, naming the file; also when a file's
      names followed no dataset scheme (all camids -1: no identities to score).
  """
  arrays = {}
  for side, path in (("query", query_path), ("gallery", gallery_path)):
    present = set(npz_keys(path))
    missing = [k for k in EXTRACT_KEYS if k not in present]
    if missing and set(REQUIRED_KEYS) <= present:
      raise inputs.EvaluationInputError(
        f"{path} holds both a query and a gallery set ({', '.join(REQUIRED_KEYS)}): "
        f"score it alone (`python -m fsaf_jax.score {path}`)"
      )
    if missing:
      raise inputs.EvaluationInputError(
        f"{path} ({side}): missing key(s) {', '.join(missing)}; the file has "
        f"{', '.join(sorted(present)) or 'no arrays'}. Expected {', '.join(EXTRACT_KEYS)} "
        "(as written by `python -m fsaf_jax.extract`)."
      )
    loaded = read_npz(path, EXTRACT_KEYS)
    camids = np.asarray(loaded["camids"])
    if camids.size and np.all(camids == -1):
      raise inputs.EvaluationInputError(
        f"{path} ({side}): no file name follows a known dataset scheme (pids and camids "
        "are all -1), so there are no identities to score",
        hint="name the images as a ReID dataset does (e.g. Market-1501 "
        "0002_c1s1_000451_03.jpg: person 0002, camera 1) before extracting",
      )
    where = f"{path} ({side})"
    try:  # each file on its own first: the messages name its keys
      feats = inputs.feature_matrix("feats", loaded["feats"])
      for k in ("pids", "camids"):
        inputs.id_vector(k, loaded[k], feats.shape[0])
    except inputs.EvaluationInputError as e:
      raise inputs.EvaluationInputError(f"{where}: {e}") from None
    arrays[f"{side}_feats"] = feats
    arrays[f"{side}_pids"] = loaded["pids"]
    arrays[f"{side}_camids"] = loaded["camids"]
  return check_features(arrays, where=f"{query_path} (query) + {gallery_path} (gallery)")


def degenerate_features(name: str, feats: np.ndarray) -> list[str]:
  """Warnings for features that can be scored but rank nothing: all-zero or equal rows.

  Args:
    name: the array's name, for the message.
    feats: float [n, D], finite.

  Returns:
    Zero or one message.
  """
  n = feats.shape[0]
  zero = int(np.sum(~np.any(feats != 0, axis=1)))
  if zero == n:
    return [f"{name}: all {n} rows are zero vectors: every distance ties, the ranking is arbitrary"]
  if n > 1 and np.all(feats == feats[:1]):
    return [
      f"{name}: all {n} rows are identical: every distance ties, the ranking is arbitrary "
      "(an untrained or collapsed model?)"
    ]
  if zero:
    return [f"{name}: {zero} of {n} rows are zero vectors (no embedding): their ranks are ties"]
  return []


def check_features(
  arrays: Mapping[str, np.ndarray], where: str = "features"
) -> dict[str, np.ndarray]:
  """Validates the six arrays against each other (see `load_features`)."""
  out = {}
  for k in FEATURE_KEYS:
    try:
      out[k] = inputs.feature_matrix(k, arrays[k])
    except inputs.EvaluationInputError as e:
      raise inputs.EvaluationInputError(f"{where}: {e}") from None
  if out["query_feats"].shape[1] != out["gallery_feats"].shape[1]:
    raise inputs.EvaluationInputError(
      f"{where}: query_feats {out['query_feats'].shape} and gallery_feats "
      f"{out['gallery_feats'].shape} have different feature dimensions."
    )
  for k in ID_KEYS:
    side = "query" if k.startswith("query") else "gallery"
    length = out[f"{side}_feats"].shape[0]
    try:
      ids = inputs.id_vector(k, arrays[k])
    except inputs.EvaluationInputError as e:
      raise inputs.EvaluationInputError(f"{where}: {e}") from None
    if ids.shape[0] != length:
      raise inputs.EvaluationInputError(
        f"{where}: {k} has shape {ids.shape} but {side}_feats has {length} rows "
        f"(shape {out[f'{side}_feats'].shape})."
      )
    out[k] = ids
  for k in FEATURE_KEYS:
    for message in degenerate_features(k, out[k]):
      warnings.warn(f"{where}: {message}", UserWarning, stacklevel=2)
  return out


def as_features(arrays: Mapping[str, np.ndarray]) -> scoring.EvalFeatures:
  """The six checked arrays (`load_features` / `load_query_gallery`) as `EvalFeatures`."""
  return scoring.EvalFeatures(*(arrays[k] for k in REQUIRED_KEYS))


def check_json_is_not_an_input(json_path: str, inputs: Sequence[str]) -> None:
  """Raises UserError if `--json` names one of the input feature files (it would be
  replaced by the metrics)."""
  for given in inputs:
    if errors.same_file(given, json_path):
      raise errors.UserError(
        f"--json={json_path} is the input {given}: the metrics would replace the features"
      )


def main(argv: Sequence[str]) -> None:
  if len(argv) not in (2, 3):
    raise app.UsageError(
      "expected FEATURES.npz (query and gallery keys) or QUERY.npz GALLERY.npz (two files "
      f"of python -m fsaf_jax.extract); got {len(argv) - 1} arguments {list(argv[1:])}"
    )
  errors.check_address_space("score")  # JAX would abort below it
  host_allocator.configure()  # CPU: keep XLA's buffers mapped, as eval.py does
  argv = [argv[0], *(paths.resolve(a) for a in argv[1:])]
  path = argv[1] if len(argv) == 2 else f"{argv[1]} + {argv[2]}"
  if len(argv) == 3 and errors.same_file(argv[1], argv[2]):
    raise errors.UserError(
      f"QUERY.npz and GALLERY.npz are the same file ({argv[1]}): each query would be "
      "scored against a gallery made of the queries",
      hint="pass the query and the gallery features (python -m fsaf_jax.extract --images="
      "<dataset>/query --out=query.npz, then the same for the gallery folder)",
    )
  if _JSON.value:
    errors.check_output_file(_JSON.value, "--json")
    check_json_is_not_an_input(_JSON.value, argv[1:])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    arrays = load_features(argv[1]) if len(argv) == 2 else load_query_gallery(*argv[1:])
    settings = EvalSettings(
      metric=_METRIC.value,
      rerank=_RERANK.value,
      max_rank=_MAX_RANK.value,
      rerank_k1=_K1.value,
      rerank_k2=_K2.value,
      rerank_lambda=_LAMBDA.value,
      query_chunk=_QUERY_CHUNK.value,
      rerank_squared=_RERANK_SQUARED.value,
    )
    results = scoring.score_features(as_features(arrays), settings).rows()
  for w in caught:
    if issubclass(w.category, UserWarning):
      print(f"score: warning: {w.message}", file=sys.stderr)
  q, g = arrays["query_feats"].shape, arrays["gallery_feats"].shape
  print(
    f"{path}: {q[0]} queries, {g[0]} gallery images, {q[1]}-d features, {_METRIC.value} distance"
  )
  print(report.metrics_table(results))
  if _JSON.value:
    # The CMC's length: max_rank, or the gallery size when that is smaller (cut).
    max_rank = len(results["plain"].cmc)
    extra = {"features": str(path), "metric": _METRIC.value, "max_rank": max_rank}
    if _RERANK.value:
      extra["rerank"] = {
        "k1": _K1.value,
        "k2": _K2.value,
        "lambda": _LAMBDA.value,
        "squared": _RERANK_SQUARED.value,
      }
    written = report.write_metrics_json(_JSON.value, results, extra=extra)
    print(f"Wrote {written}")


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _METRIC = flags.DEFINE_enum("metric", "cosine", distance.METRICS, "Distance between features.")
  _RERANK = flags.DEFINE_bool("rerank", False, "Also report k-reciprocal re-ranking.")
  _RERANK_SQUARED = flags.DEFINE_bool(
    "rerank_squared",
    False,
    "Square the distances before re-ranking, as fast-reid's / torchreid's re_ranking do "
    "(reproduces their figures); default: as given, as BoT's.",
  )
  _JSON = paths.DEFINE_path("json", None, "Write the metrics as JSON to this file.")
  _MAX_RANK = flags.DEFINE_integer("max_rank", 50, "CMC length.")
  _K1 = flags.DEFINE_integer("k1", 20, "Re-ranking k1.")
  _K2 = flags.DEFINE_integer("k2", 6, "Re-ranking k2.")
  _LAMBDA = flags.DEFINE_float("lambda_value", 0.3, "Re-ranking weight of the original distance.")
  _QUERY_CHUNK = flags.DEFINE_integer(
    "query_chunk", metrics.DEFAULT_QUERY_CHUNK, "Queries scored per device call (bounds memory)."
  )
  errors.run(main)
