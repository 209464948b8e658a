"""Evaluates a model on a dataset's query / gallery splits: metrics, JSON and figure.

    result = evaluate_model(config, variables, outdir=workdir)

1. Loads the `query` and `gallery` splits of `config.input.dataset` (built TFDS
   data, `data_pipelines.datasets.source.load_source`).
2. Embeds them with the jitted extractor (`extractor.make_extractor`): post-BNNeck
   features, flip-averaged when `config.eval.flip`, L2-normalised; fixed-size batches
   of `config.input.eval_batch_size` sharded over the mesh's 'data' axis.
3. Scores them with the Market-1501 protocol (`metrics.evaluate_features`: the
   `config.eval.metric` distance, chunked over queries, CMC cut at
   `config.eval.max_rank`), and again after k-reciprocal re-ranking
   (`rerank.re_ranking_features`) when `config.eval.rerank`.
4. Prints the metrics table (`report.metrics_table`), writes
   `OUTDIR/eval/step_<N>/metrics.json` (`report.write_metrics_json`: `metrics`,
   `metrics_rerank` as `RankMetrics.as_dict()` fractions, plus dataset, counts,
   settings, timing and the config) and, unless disabled, the ranked-list figure
   `OUTDIR/eval/step_<N>/ranked_list.png`
   (`figure.ranked_list_figure`, the paper's Fig. 2: `config.eval.num_figure_queries`
   queries with a positive, evenly spread over the query set, each with its top-10,
   right matches framed green, wrong ones red; ranked by the re-ranked distances when
   re-ranking is on). One folder per step (`result_dirs`): evaluating another step
   never overwrites these; `OUTDIR/eval/latest` names the newest step's folder.

It takes variables in memory, so the training loop calls it on its current state
and `eval.py` (`evaluate_checkpoint`) on restored ones. Multi-process: every process
embeds the whole query and gallery sets (each passes the same host batch; the features
are exact, the work is duplicated) and computes the same metrics; only process 0
prints and writes files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import PIL.Image
from absl import logging
from etils import epath
from jax.sharding import Mesh

from data_pipelines import eval_pipeline as input_pipeline
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation import distance as distance_lib
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.evaluation import figure as figure_lib
from fsaf_jax.evaluation import metrics as metrics_lib
from fsaf_jax.evaluation import report as report_lib
from fsaf_jax.evaluation import rerank as rerank_lib
from fsaf_jax.evaluation import result_dirs
from fsaf_jax.models import fsaf

EVAL_SUBDIR = result_dirs.EVAL_SUBDIR
METRICS_FILE = "metrics.json"
FIGURE_FILE = "ranked_list.png"
FIGURE_TOP_K = 10


@dataclasses.dataclass(frozen=True)
class EvalFeatures:
  """Embeddings and labels of the query and gallery splits, in source order.

  Attributes:
    query_feats: float32 [M, C], unit rows.
    gallery_feats: float32 [N, C], unit rows.
    query_pids, gallery_pids: int32 [M], [N] (gallery pid -1 = junk, 0 = distractor).
    query_camids, gallery_camids: int32 [M], [N], 0-based.
    query_names, gallery_names: str [M], [N] file names.
  """

  query_feats: np.ndarray
  gallery_feats: np.ndarray
  query_pids: np.ndarray
  gallery_pids: np.ndarray
  query_camids: np.ndarray
  gallery_camids: np.ndarray
  query_names: np.ndarray
  gallery_names: np.ndarray

  def ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(query_pids, gallery_pids, query_camids, gallery_camids): `metrics.evaluate` order."""
    return self.query_pids, self.gallery_pids, self.query_camids, self.gallery_camids


def num_classes_of(variables: Mapping[str, Any]) -> int:
  """Classifier width (training identities) of FSAF variables.

  Raises:
    ValueError: no `params/head/classifier/kernel` (not FSAF variables).
  """
  try:
    kernel = variables["params"]["head"]["classifier"]["kernel"]
  except (KeyError, TypeError) as e:
    keys = sorted(variables["params"]) if "params" in variables else sorted(variables)
    raise ValueError(
      "variables have no params/head/classifier/kernel: expected the FSAF model's "
      f"{{'params', 'batch_stats'}}; top-level keys {keys}"
    ) from e
  return int(kernel.shape[-1])


def load_eval_sources(
  dataset: str, data_dir: str | os.PathLike[str]
) -> tuple[source_lib.ReidSource, source_lib.ReidSource]:
  """(query, gallery) random-access sources of built `dataset` in `data_dir`.

  Raises:
    FileNotFoundError: the dataset is not built (the message gives the build command).
  """
  return (
    source_lib.load_source(dataset, "query", data_dir),
    source_lib.load_source(dataset, "gallery", data_dir),
  )


def eval_batch_size(requested: int, mesh: Mesh, num_images: int) -> int:
  """Host batch size for the extractor: `requested`, made valid for the mesh.

  Capped at the number of images (no batches of padding only), then rounded up so
  that `batch * process_count` divides evenly over the mesh's 'data' axis.
  """
  if requested < 1:
    raise ValueError(f"config.input.eval_batch_size must be positive, got {requested}")
  data = mesh.shape[extractor_lib.DATA_AXIS]
  step = data // math.gcd(data, jax.process_count())
  batch = max(1, min(int(requested), int(num_images)))
  return -(-batch // step) * step


def extract_eval_features(
  config: ml_collections.ConfigDict,
  variables: Mapping[str, Any],
  query_source: Any,
  gallery_source: Any,
  *,
  mesh: Mesh | None = None,
) -> tuple[EvalFeatures, dict[str, float]]:
  """Embeds both splits with one compiled extractor.

  Args:
    config: run config: `model` (architecture), `input.image_size`,
      `input.eval_batch_size`, `eval.flip`.
    variables: FSAF {'params', 'batch_stats'} (host or device arrays).
    query_source, gallery_source: random-access sources of records `image` (encoded
      bytes), `person_id`, `camera_id`, `file_name`.
    mesh: mesh with a 'data' axis; default `fsaf_jax.core.mesh.make_mesh()`.

  Returns:
    (features, timing): timing has `extract_query_s`, `extract_gallery_s` and
    `images_per_s` (both splits, compile time included).
  """
  mesh = make_mesh() if mesh is None else mesh
  image_size = tuple(int(s) for s in config.input.image_size)
  model = fsaf.create_model(config.model, num_classes_of(variables))
  batch_size = eval_batch_size(
    config.input.eval_batch_size, mesh, max(len(query_source), len(gallery_source))
  )
  extractor = extractor_lib.make_extractor(
    model,
    variables,
    batch_size=batch_size,
    image_size=image_size,
    flip=bool(config.eval.flip),
    mesh=mesh,
  )
  out, timing = {}, {}
  for split, src in (("query", query_source), ("gallery", gallery_source)):
    if len(src) == 0:
      raise ValueError(f"the {split} split of {config.input.dataset!r} is empty")
    start = time.perf_counter()
    batches = input_pipeline.create_eval_batches(src, batch_size, image_size)
    out[split] = extractor_lib.extract_features(extractor, batches)
    timing[f"extract_{split}_s"] = time.perf_counter() - start
    if len(out[split][0]) != len(src):  # rows must map to source indices (figure)
      raise RuntimeError(f"{split}: embedded {len(out[split][0])} of {len(src)} images")
    logging.info("Embedded %d %s images in %.1fs", len(src), split, timing[f"extract_{split}_s"])
  total = len(query_source) + len(gallery_source)
  timing["images_per_s"] = total / (timing["extract_query_s"] + timing["extract_gallery_s"])
  (qf, qp, qc, qn), (gf, gp, gc, gn) = out["query"], out["gallery"]
  return EvalFeatures(qf, gf, qp, gp, qc, gc, qn, gn), timing


def score_features(
  features: EvalFeatures, eval_config: ml_collections.ConfigDict
) -> tuple[metrics_lib.RankMetrics, metrics_lib.RankMetrics | None, np.ndarray | None, dict]:
  """Market-protocol metrics of the features, and after re-ranking when asked for.

  Args:
    features: from `extract_eval_features`.
    eval_config: `config.eval` (metric, max_rank, query_chunk, rerank, rerank_*).

  Returns:
    (metrics, metrics_rerank, reranked, timing): `metrics_rerank` and the float32
    [M, N] re-ranked distances `reranked` are None unless `eval_config.rerank`;
    timing has `score_s` (and `rerank_s`: re-ranking and its scoring).
  """
  ids = features.ids()
  max_rank, query_chunk = int(eval_config.max_rank), int(eval_config.query_chunk)
  timing = {}
  start = time.perf_counter()
  metrics = metrics_lib.evaluate_features(
    features.query_feats,
    features.gallery_feats,
    *ids,
    metric=eval_config.metric,
    max_rank=max_rank,
    query_chunk=query_chunk,
  )
  timing["score_s"] = time.perf_counter() - start
  if not eval_config.rerank:
    return metrics, None, None, timing
  start = time.perf_counter()
  reranked = rerank_lib.re_ranking_features(
    features.query_feats,
    features.gallery_feats,
    metric=eval_config.metric,
    k1=int(eval_config.rerank_k1),
    k2=int(eval_config.rerank_k2),
    lambda_value=float(eval_config.rerank_lambda),
    squared=bool(eval_config.rerank_squared),
  )
  with warnings.catch_warnings():  # the skipped-queries warning was given once already
    warnings.simplefilter("ignore")
    metrics_rerank = metrics_lib.evaluate(
      reranked, *ids, max_rank=max_rank, query_chunk=query_chunk
    )
  timing["rerank_s"] = time.perf_counter() - start
  return metrics, metrics_rerank, reranked, timing


def figure_queries(features: EvalFeatures, num: int) -> np.ndarray:
  """Indices of `num` queries with a positive in the gallery, evenly spread, sorted."""
  counts, _ = metrics_lib.positive_lists(
    features.query_pids, features.query_camids, features.gallery_pids, features.gallery_camids
  )
  valid = np.nonzero(counts > 0)[0]
  if num <= 0 or valid.size == 0:
    return np.zeros(0, np.int64)
  if num >= valid.size:
    return valid
  return valid[np.linspace(0, valid.size - 1, num).round().astype(np.int64)]


def _decoded(source: Any, index: int) -> np.ndarray:
  """Record `index` of `source` decoded as uint8 RGB [H, W, 3] at its own size."""
  with PIL.Image.open(io.BytesIO(source[int(index)]["image"])) as image:
    return np.asarray(image.convert("RGB"))


def write_ranked_list_figure(
  path: epath.PathLike,
  features: EvalFeatures,
  query_source: Any,
  gallery_source: Any,
  *,
  metric: str,
  num_queries: int,
  reranked: np.ndarray | None = None,
  title: str = "",
) -> int:
  """Renders the ranked-list figure (`figure.ranked_list_figure`) to `path`.

  Only the distances of the drawn queries are computed, and only the images shown
  are read and decoded (at their stored size).

  Args:
    path: output PNG.
    features: the evaluated features (source order).
    query_source, gallery_source: the sources, to read the images by index.
    metric: distance of the ranking ('cosine' | 'euclidean'), unless `reranked`.
    num_queries: rows of the figure (queries with a positive, evenly spread).
    reranked: re-ranked [M, N] distances to rank by instead, or None.
    title: figure title.

  Returns:
    The number of query rows drawn (0: no query has a positive, nothing written).
  """
  queries = figure_queries(features, num_queries)
  if queries.size == 0:
    logging.warning("No query has a positive in the gallery: no ranked-list figure.")
    return 0
  if reranked is not None:
    distances = np.asarray(reranked)[queries]
  else:
    distances = np.asarray(
      distance_lib.pairwise_distance(
        features.query_feats[queries], features.gallery_feats, metric=metric
      )
    )
  figure_lib.ranked_list_figure(
    distances,
    features.query_pids[queries],
    features.gallery_pids,
    features.query_camids[queries],
    features.gallery_camids,
    query_images=lambda i: _decoded(query_source, queries[i]),
    gallery_images=lambda j: _decoded(gallery_source, j),
    query_indices=range(queries.size),
    top_k=FIGURE_TOP_K,
    title=title or None,
    path=path,
  )
  return int(queries.size)


def evaluate_model(
  config: ml_collections.ConfigDict,
  variables: Mapping[str, Any],
  *,
  outdir: epath.PathLike | None,
  mesh: Mesh | None = None,
  data_dir: str | os.PathLike[str] | None = None,
  write_figure: bool = True,
  step: int | None = None,
  config_name: str | None = None,
  checkpoint: str | None = None,
) -> dict[str, Any]:
  """Evaluates `variables` on the query / gallery splits of `config.input.dataset`.

  Args:
    config: the run config (`configs/base.py`): `model`, `input.dataset`,
      `input.data_dir`, `input.image_size`, `input.eval_batch_size`, `eval.*`.
    variables: FSAF {'params', 'batch_stats'}, in memory (trained, restored or freshly
      initialised); extra collections are ignored.
    outdir: the work dir (or any output dir): writes `OUTDIR/eval/step_<step>/metrics.json`
      and `.../ranked_list.png` (process 0 only) and points `OUTDIR/eval/latest` at
      that folder unless it names a higher step (`result_dirs`). None: write nothing.
    mesh: the device mesh ('data' axis); default all devices.
    data_dir: where the dataset is built; default `config.input.data_dir`.
    write_figure: render the ranked-list figure (`config.eval.num_figure_queries`
      rows).
    step: training step of the variables, recorded in metrics.json and naming the
      output folder (None: `eval/step_unknown/`).
    config_name: name of the config (e.g. 'fsaf_market'), recorded in metrics.json.
    checkpoint: path the variables were restored from, recorded in metrics.json.

  Returns:
    The metrics.json content: `metrics` (`RankMetrics.as_dict()`: rank1/5/10/20, mAP,
    mINP, num_valid, num_skipped, cmc), `metrics_rerank` (same, or None), the dataset,
    counts (`num_query`, `num_gallery`, `num_valid_queries`), eval settings, `timing`
    (seconds) and the output paths.

  Raises:
    FileNotFoundError: the dataset is not built in `data_dir` (says how to build it).
    ValueError: the config does not match the variables, or bad eval settings.
  """
  start = time.perf_counter()
  dataset = config.input.dataset
  data_dir = config.input.data_dir if data_dir is None else data_dir
  distance_lib.check_metric(config.eval.metric)
  query_source, gallery_source = load_eval_sources(dataset, data_dir)
  features, timing = extract_eval_features(
    config, variables, query_source, gallery_source, mesh=mesh
  )
  metrics, metrics_rerank, reranked, score_timing = score_features(features, config.eval)
  timing.update(score_timing)

  title = f"{config_name or dataset}" + (f" step {step}" if step is not None else "")
  rows = {"plain": metrics}
  if metrics_rerank is not None:
    rows["re-ranked"] = metrics_rerank
  is_main = jax.process_index() == 0
  if is_main:
    print(f"{title}: {dataset}, {config.eval.metric} distance\n{report_lib.metrics_table(rows)}")
    sys.stdout.flush()

  scored = {"metrics": metrics}
  if metrics_rerank is not None:
    scored["metrics_rerank"] = metrics_rerank
  extra: dict[str, Any] = {
    "config_name": config_name,
    "dataset": dataset,
    "step": step,
    "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
    "num_query": len(features.query_pids),
    "num_gallery": len(features.gallery_pids),
    "num_valid_queries": metrics.num_valid,
    "feature_dim": int(features.query_feats.shape[1]),
    "eval": {
      "metric": config.eval.metric,
      "flip": bool(config.eval.flip),
      "max_rank": int(config.eval.max_rank),
      "rerank": bool(config.eval.rerank),
      "rerank_k1": int(config.eval.rerank_k1),
      "rerank_k2": int(config.eval.rerank_k2),
      "rerank_lambda": float(config.eval.rerank_lambda),
      "rerank_squared": bool(config.eval.rerank_squared),
    },
    "timing": timing,
    "metrics_path": None,
    "figure_path": None,
    "config": json.loads(config.to_json_best_effort()),
  }
  if metrics_rerank is None:
    extra["metrics_rerank"] = None

  if outdir is not None and is_main:
    eval_dir = result_dirs.step_dir(outdir, step)
    eval_dir.mkdir(parents=True, exist_ok=True)
    if write_figure and config.eval.num_figure_queries > 0:
      start_fig = time.perf_counter()
      figure_path = eval_dir / FIGURE_FILE
      drawn = write_ranked_list_figure(
        figure_path,
        features,
        query_source,
        gallery_source,
        metric=config.eval.metric,
        num_queries=int(config.eval.num_figure_queries),
        reranked=reranked,
        title=title + (" (re-ranked)" if reranked is not None else ""),
      )
      timing["figure_s"] = time.perf_counter() - start_fig
      if drawn:
        extra["figure_path"] = os.fspath(figure_path)
    metrics_path = eval_dir / METRICS_FILE
    extra["metrics_path"] = os.fspath(metrics_path)
    timing["total_s"] = time.perf_counter() - start
    report_lib.write_metrics_json(metrics_path, scored, extra)
    result_dirs.update_latest(outdir, step)
    logging.info("Wrote %s", metrics_path)
  else:
    timing["total_s"] = time.perf_counter() - start
  return report_lib.metrics_json(scored, extra)


# --- Checkpoints (eval.py). ---------------------------------------------------------------


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  *,
  workdir: str | os.PathLike[str] | None = None,
  checkpoint: str | os.PathLike[str] | None = None,
  outdir: str | os.PathLike[str] | None = None,
  mesh: Mesh | None = None,
  config_name: str | None = None,
  write_figure: bool = True,
) -> dict[str, Any]:
  """Restores a checkpoint and runs `evaluate_model` on it (what eval.py does).

  Args:
    config: the run config (`--config`); its network and input size must match the
      checkpoint's (`inference_config`), its `eval.*` and `input.*` data settings
      are used. An empty `input.data_dir` means the checkpoint's.
    workdir: a training work dir: its newest intact checkpoint (unless `checkpoint`;
      damaged newer ones are skipped with a warning line naming them), and the
      default output dir.
    checkpoint: a checkpoint `WORKDIR/checkpoints/<step>` (or a work dir, or its
      `checkpoints/` dir) to evaluate instead of the latest of `workdir`.
    outdir: where `eval/step_<N>/` goes; default `workdir`, else the work dir holding
      `checkpoint`.
    mesh, config_name, write_figure: as `evaluate_model`.

  Returns:
    The `evaluate_model` result (`checkpoint`: the step folder restored, `step`: its
    step).

  Raises:
    FileNotFoundError: no checkpoint there (the path is named), or the dataset is not
      built (the message gives the build command).
    checkpoint.IncompatibleCheckpointError: the network / input size differ.
    checkpoint_integrity.DamagedCheckpointError: the checkpoint `checkpoint` names is
      damaged (or every checkpoint of the work dir is).
  """
  if workdir is None and checkpoint is None:
    raise ValueError("pass --workdir (latest checkpoint) or --checkpoint=PATH")
  path = epath.Path(os.path.abspath(os.path.expanduser(os.fspath(checkpoint or workdir))))
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint: {path} does not exist")
  directory, _ = checkpoint_restore.locate_checkpoint(path)
  owner = directory.parent  # the work dir
  step, saved, variables = checkpoint_restore.restore_for_inference(path)
  where = os.fspath(directory / str(step))
  config = checkpoint_restore.inference_config(config, saved, where)
  logging.info("Evaluating %s (step %s) on %s", where, step, config.input.dataset)
  if outdir is None:
    outdir = workdir if workdir is not None else owner
  return evaluate_model(
    config,
    variables,
    outdir=outdir,
    mesh=mesh,
    write_figure=write_figure,
    step=step,
    config_name=config_name,
    checkpoint=where,
  )
