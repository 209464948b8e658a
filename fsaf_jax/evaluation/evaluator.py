"""The evaluator of a run: built once, run on any number of variables.

  evaluator = Evaluator(config, num_classes=751)       # checks every eval setting
  metrics = evaluator.run(variables, step=1200)        # {'rank1': ..., 'mAP': ..., ...}
  evaluator.print_table()
  evaluator.write(workdir)                             # eval/step_1200/metrics.json, .png

Construction (before a run's first training step) checks `config.eval.*` and
`config.input.eval_batch_size` (`settings.EvalSettings`: a bad value raises
`errors.UserError` naming it), loads the `query` and `gallery` splits of
`config.input.dataset` (built TFDS data, `data_pipelines.datasets.source`), builds the
model and the jitted extractor (`extractor.make_extractor`: post-BNNeck features,
flip-averaged when `config.eval.flip`, L2-normalised; fixed-size batches sharded over
the mesh's 'data' axis). The extractor takes the variables as an argument, so it is
compiled once and every `run` reuses it.

`run(variables)` embeds both splits, scores them (`scoring.score_features`: the
Market-1501 protocol with the `config.eval.metric` distance, CMC cut at
`config.eval.max_rank`, and again after k-reciprocal re-ranking when
`config.eval.rerank`) and returns the flat metrics (`metrics.METRIC_NAMES`, the
re-ranked ones prefixed 'rerank/'). What the writers need (features, re-ranked
distances, timing) stays in `evaluator.last` (`EvalResult`). The writers:
`print_table` (`report.metrics_table`), `write` (`OUTDIR/eval/step_<N>/metrics.json`:
`metrics`, `metrics_rerank` as `RankMetrics.as_dict()` fractions, plus dataset,
counts, settings, timing, paths and the config; and unless disabled the ranked-list
figure `OUTDIR/eval/step_<N>/ranked_list.png`, `figure.write_ranked_list_figure`,
ranked by the re-ranked distances when re-ranking is on), and the training loop's
TensorBoard logger, which takes the flat dict. One folder per step (`result_dirs`):
evaluating another step never overwrites these; `OUTDIR/eval/latest` names the newest
step's folder.

`evaluate_model` (one evaluation of variables in memory) and `evaluate_checkpoint`
(eval.py: restore, then evaluate) build an Evaluator and run it once. Multi-process:
every process embeds the whole query and gallery sets (each passes the same host
batch; the features are exact, the work is duplicated) and computes the same metrics;
only process 0 prints and writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath
from jax.sharding import Mesh

from data_pipelines import eval_pipeline
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_restore, errors
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.evaluation import figure as figure_lib
from fsaf_jax.evaluation import report as report_lib
from fsaf_jax.evaluation import result_dirs
from fsaf_jax.evaluation.scoring import EvalFeatures, Scores, score_features
from fsaf_jax.evaluation.settings import EvalSettings
from fsaf_jax.models import registry

__all__ = [
  "EvalFeatures",
  "EvalResult",
  "Evaluator",
  "eval_batch_size",
  "evaluate_checkpoint",
  "evaluate_model",
  "load_eval_sources",
  "num_classes_of",
  "score_features",
]

EVAL_SUBDIR = result_dirs.EVAL_SUBDIR
METRICS_FILE = "metrics.json"
FIGURE_FILE = "ranked_list.png"


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


@dataclasses.dataclass
class EvalResult:
  """One `Evaluator.run`: what the writers consume.

  Attributes:
    step: training step of the variables (None: unknown).
    metrics: the flat metrics `run` returned.
    scores: `scoring.Scores` (RankMetrics, re-ranked distances [M, N] or None).
    features: the query / gallery features (source order).
    timing: seconds: `extract_query_s`, `extract_gallery_s`, `images_per_s`, `score_s`
      (`rerank_s`); the writers add `figure_s`, `total_s`.
    started: `time.perf_counter()` at the start of the run.
  """

  step: int | None
  metrics: dict[str, float]
  scores: Scores
  features: EvalFeatures
  timing: dict[str, float]
  started: float


class Evaluator:
  """Evaluates FSAF variables on the query / gallery splits of `config.input.dataset`.

  Attributes:
    config: the run config.
    settings: the checked `EvalSettings`.
    config_name: name of the config, in titles and metrics.json (or None).
    dataset, data_dir: the evaluated dataset and where it is built.
    mesh: the device mesh.
    num_classes: classifier width the variables must have.
    query_source, gallery_source: the splits' random-access sources.
    batch_size: host batch size of the extractor (`eval_batch_size`).
    extractor: the jitted `extractor.Extractor`, compiled at the first `run`.
    last: the last `run`'s `EvalResult` (None before any).
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    config_name: str | None = None,
  ):
    """Checks the settings, loads the sources, builds the model and the extractor.

    Args:
      config: the run config (`configs/base.py`): `model`, `input.dataset`,
        `input.data_dir`, `input.image_size`, `input.eval_batch_size`, `eval.*`.
      num_classes: classifier width of the variables to evaluate; default
        `config.model.num_classes` (then it must be resolved, not -1).
      mesh: the device mesh ('data' axis); default all devices.
      data_dir: where the dataset is built; default `config.input.data_dir`.
      config_name: name of the config (e.g. 'fsaf_market').

    Raises:
      errors.UserError: a bad `config.eval.*` / `config.input.eval_batch_size` value
        (named, with the values allowed), an empty query or gallery split, or no
        `num_classes`.
      FileNotFoundError: the dataset is not built in `data_dir` (says how to build it).
      ValueError: `config.model.num_classes` differs from `num_classes`.
    """
    self.settings = EvalSettings.from_config(config)
    self.config = config
    self.config_name = config_name
    self.dataset = config.input.dataset
    self.data_dir = config.input.data_dir if data_dir is None else data_dir
    self.mesh = make_mesh() if mesh is None else mesh
    if num_classes is None:
      num_classes = int(config.model.num_classes)
      if num_classes < 1:
        raise errors.UserError(
          f"config.model.num_classes={num_classes}: the evaluator needs the classifier "
          "width (pass num_classes, or resolve it from the training data first)"
        )
    self.num_classes = int(num_classes)
    self.query_source, self.gallery_source = load_eval_sources(self.dataset, self.data_dir)
    for split, src in (("query", self.query_source), ("gallery", self.gallery_source)):
      if len(src) == 0:
        raise errors.UserError(f"the {split} split of {self.dataset!r} is empty")
    self._image_size = tuple(int(s) for s in config.input.image_size)
    model = registry.create_model(config.model, self.num_classes)
    self.batch_size = eval_batch_size(
      self.settings.batch_size,
      self.mesh,
      max(len(self.query_source), len(self.gallery_source)),
    )
    self.extractor = extractor_lib.make_extractor(
      model,
      None,
      batch_size=self.batch_size,
      image_size=self._image_size,
      flip=self.settings.flip,
      mesh=self.mesh,
    )
    self.last: EvalResult | None = None

  def extract(self, variables: Mapping[str, Any]) -> tuple[EvalFeatures, dict[str, float]]:
    """Embeds both splits with the compiled extractor.

    Args:
      variables: FSAF {'params', 'batch_stats'} (host or device arrays; extra
        collections are ignored) with `num_classes` classes.

    Returns:
      (features, timing): timing has `extract_query_s`, `extract_gallery_s` and
      `images_per_s` (both splits; the first call includes the compile).

    Raises:
      ValueError: the variables are not FSAF variables of `num_classes` classes.
    """
    got = num_classes_of(variables)
    if got != self.num_classes:
      raise ValueError(
        f"the variables have {got} classes but the evaluator was built for "
        f"{self.num_classes} (model.num_classes)"
      )
    self.extractor.set_variables(variables)
    out, timing = {}, {}
    for split, src in (("query", self.query_source), ("gallery", self.gallery_source)):
      start = time.perf_counter()
      batches = eval_pipeline.create_eval_batches(src, self.batch_size, self._image_size)
      out[split] = extractor_lib.extract_features(self.extractor, batches)
      timing[f"extract_{split}_s"] = time.perf_counter() - start
      if len(out[split][0]) != len(src):  # rows must map to source indices (figure)
        raise RuntimeError(f"{split}: embedded {len(out[split][0])} of {len(src)} images")
      logging.info("Embedded %d %s images in %.1fs", len(src), split, timing[f"extract_{split}_s"])
    total = len(self.query_source) + len(self.gallery_source)
    timing["images_per_s"] = total / (timing["extract_query_s"] + timing["extract_gallery_s"])
    (qf, qp, qc, qn), (gf, gp, gc, gn) = out["query"], out["gallery"]
    return EvalFeatures(qf, gf, qp, gp, qc, gc, qn, gn), timing

  def run(self, variables: Mapping[str, Any], *, step: int | None = None) -> dict[str, float]:
    """Embeds and scores both splits with `variables`.

    Args:
      variables: FSAF {'params', 'batch_stats'} of `num_classes` classes (trained,
        restored or freshly initialised).
      step: training step of the variables (names the output folder of `write`).

    Returns:
      {name: fraction} over `metrics.METRIC_NAMES` within the CMC ('rank1', 'rank5',
      'rank10', 'rank20', 'mAP', 'mINP'), and the same prefixed 'rerank/' when
      `config.eval.rerank`. The full result is kept in `last`.
    """
    self.last = self.score(variables, step=step)
    return dict(self.last.metrics)

  def score(self, variables: Mapping[str, Any], *, step: int | None = None) -> EvalResult:
    """`run` without keeping the result in `last` (e.g. a comparison beside it).

    Returns:
      The `EvalResult` (its `metrics`: what `run` returns).
    """
    started = time.perf_counter()
    features, timing = self.extract(variables)
    scores = score_features(features, self.settings, mesh=self.mesh)
    timing.update(scores.timing)
    return EvalResult(step, scores.flat(), scores, features, timing, started)

  def _result(self, result: EvalResult | None) -> EvalResult:
    result = self.last if result is None else result
    if result is None:
      raise ValueError("nothing to write: call run first")
    return result

  def title(self, result: EvalResult | None = None) -> str:
    """'<config name or dataset>[ step N]'."""
    step = self._result(result).step
    return f"{self.config_name or self.dataset}" + (f" step {step}" if step is not None else "")

  def print_table(self, result: EvalResult | None = None) -> None:
    """Prints the metrics table of `result` (default `last`) on process 0."""
    result = self._result(result)
    if jax.process_index() == 0:
      table = report_lib.metrics_table(result.scores.rows())
      print(f"{self.title(result)}: {self.dataset}, {self.settings.metric} distance\n{table}")
      sys.stdout.flush()

  def write(
    self,
    outdir: epath.PathLike | None,
    *,
    result: EvalResult | None = None,
    write_figure: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
  ) -> dict[str, Any]:
    """Writes metrics.json and the ranked-list figure of `result` (default `last`).

    Args:
      outdir: the work dir (or any output dir): `OUTDIR/eval/step_<step>/metrics.json`
        and `.../ranked_list.png` (process 0 only), `OUTDIR/eval/latest` pointing at
        that folder unless it names a higher step (`result_dirs`); `eval/step_unknown/`
        without a step. None: write nothing.
      result: a `run`'s result; default the last.
      write_figure: render the figure (`config.eval.num_figure_queries` rows; 0: none).
      checkpoint: path the variables were restored from, recorded in metrics.json.

    Returns:
      The metrics.json content: `metrics` (`RankMetrics.as_dict()`: rank1/5/10/20, mAP,
      mINP, num_valid, num_skipped, cmc), `metrics_rerank` (same, or None), the
      dataset, counts (`num_query`, `num_gallery`, `num_valid_queries`), eval settings,
      `timing` (seconds) and the output paths (None when not written).
    """
    result = self._result(result)
    features, scores, timing = result.features, result.scores, result.timing
    settings = self.settings
    scored = {"metrics": scores.metrics}
    if scores.metrics_rerank is not None:
      scored["metrics_rerank"] = scores.metrics_rerank
    extra: dict[str, Any] = {
      "config_name": self.config_name,
      "dataset": self.dataset,
      "step": result.step,
      "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
      "num_query": len(features.query_pids),
      "num_gallery": len(features.gallery_pids),
      "num_valid_queries": scores.metrics.num_valid,
      "feature_dim": int(features.query_feats.shape[1]),
      "eval": settings.as_json(),
      "timing": timing,
      "metrics_path": None,
      "figure_path": None,
      "config": json.loads(self.config.to_json_best_effort()),
    }
    if scores.metrics_rerank is None:
      extra["metrics_rerank"] = None

    if outdir is not None and jax.process_index() == 0:
      eval_dir = result_dirs.step_dir(outdir, result.step)
      with result_dirs.reporting_write_errors(eval_dir):
        eval_dir.mkdir(parents=True, exist_ok=True)
        if write_figure and settings.num_figure_queries > 0:
          start_fig = time.perf_counter()
          figure_path = eval_dir / FIGURE_FILE
          drawn = figure_lib.write_ranked_list_figure(
            figure_path,
            features,
            self.query_source,
            self.gallery_source,
            metric=settings.metric,
            num_queries=settings.num_figure_queries,
            reranked=scores.reranked,
            title=self.title(result) + (" (re-ranked)" if scores.reranked is not None else ""),
          )
          timing["figure_s"] = time.perf_counter() - start_fig
          if drawn:
            extra["figure_path"] = os.fspath(figure_path)
        metrics_path = eval_dir / METRICS_FILE
        extra["metrics_path"] = os.fspath(metrics_path)
        timing["total_s"] = time.perf_counter() - result.started
        report_lib.write_metrics_json(metrics_path, scored, extra)
        result_dirs.update_latest(outdir, result.step)
        logging.info("Wrote %s", metrics_path)
    else:
      timing["total_s"] = time.perf_counter() - result.started
    return report_lib.metrics_json(scored, extra)


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
  """One evaluation of `variables`: an `Evaluator` built for them, run, printed, written.

  Args:
    config, mesh, data_dir, config_name: as `Evaluator` (`num_classes`: the
      variables').
    variables: FSAF {'params', 'batch_stats'}, in memory.
    outdir, write_figure, checkpoint: as `Evaluator.write`.
    step: as `Evaluator.run`.

  Returns:
    The metrics.json content (`Evaluator.write`).

  Raises:
    errors.UserError: bad eval settings.
    FileNotFoundError: the dataset is not built in `data_dir` (says how to build it).
    ValueError: the config does not match the variables.
  """
  evaluator = Evaluator(
    config,
    num_classes=num_classes_of(variables),
    mesh=mesh,
    data_dir=data_dir,
    config_name=config_name,
  )
  evaluator.run(variables, step=step)
  evaluator.print_table()
  return evaluator.write(outdir, write_figure=write_figure, checkpoint=checkpoint)


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
  """Restores a checkpoint and evaluates it (what eval.py does).

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
    errors.UserError: the results cannot be written there (`result_dirs.check_writable`;
      checked before the evaluation).
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
  flag = (
    "--outdir" if outdir is not None else "--workdir" if workdir is not None else "--checkpoint"
  )
  if outdir is None:
    outdir = workdir if workdir is not None else owner
  try:
    result_dirs.check_writable(outdir, step, flag)
  except errors.UserError as e:
    if flag != "--outdir":
      e.hint = "pass --outdir=<a writable folder> for the results"
    raise
  logging.info("Evaluating %s (step %s) on %s", where, step, config.input.dataset)
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
