"""The evaluators of a run: built once from the run's model, run on any number of variables.

  evaluators = build_evaluators(model, config)          # one per evaluation set
  results = [ev.run(variables, step=1200) for ev in evaluators]
  writers.report(results, workdir)                      # tables, metrics.json, figures

An `Evaluator` evaluates one set (`eval_sets.EvalSet`: by default the training set,
`config.input.dataset`; `config.eval.datasets` lists others). Construction checks
`config.eval.*` and `config.input.eval_batch_size` (`settings.EvalSettings`: a bad
value raises `errors.UserError` naming it), loads the set's `query` and `gallery`
splits (built TFDS data, `data_pipelines.datasets.source`) and builds the jitted
extractor of the model it is given (`extractor.make_extractor`: post-BNNeck features,
flip-averaged when `config.eval.flip`, L2-normalised; fixed-size batches sharded over
the mesh's 'data' axis). The extractor takes the variables as an argument, so it is
compiled once and every `run` reuses it.

`run(variables, step=...)` embeds both splits, scores them (`scoring.score_features`:
the Market-1501 protocol with the `config.eval.metric` distance, CMC cut at
`config.eval.max_rank`, and again after k-reciprocal re-ranking when
`config.eval.rerank`), computes the positive / negative pair distances and fast-reid's
TPR@FPR (`roc`, on the distances the ranked-list figure ranks by: re-ranked when
re-ranking is on) and the activation maps of the figure's queries
(`activation_maps`), and returns all of it as an `EvalResult`; the evaluator keeps no
result. The writers (`writers`: table, metrics.json and figures, TensorBoard scalars)
are functions of results.

`evaluate_model` (one evaluation of variables in memory) and `evaluate_checkpoint`
(eval.py: restore, then evaluate) build the evaluators and run them once.
Multi-process: every process embeds the whole query and gallery sets (each passes the
same host batch; the features are exact, the work is duplicated) and computes the same
metrics; only process 0 prints and writes files.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh

from data_pipelines import errors, eval_pipeline, paths
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation import activation_maps as activation_lib
from fsaf_jax.evaluation import distance as distance_lib
from fsaf_jax.evaluation import eval_data, inputs, result_dirs, roc, writers
from fsaf_jax.evaluation import eval_sets as eval_sets_lib
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.evaluation import figure as figure_lib
from fsaf_jax.evaluation import metrics as metrics_lib
from fsaf_jax.evaluation.eval_sets import EvalSet
from fsaf_jax.evaluation.result import ActivationMaps, EvalResult
from fsaf_jax.evaluation.scoring import EvalFeatures, score_features
from fsaf_jax.evaluation.settings import EvalSettings
from fsaf_jax.models import registry
from fsaf_jax.models.head import num_classes_of

__all__ = [
  "EvalFeatures",
  "EvalResult",
  "Evaluator",
  "build_evaluators",
  "eval_batch_size",
  "evaluate_checkpoint",
  "evaluate_model",
  "load_eval_sources",
  "run_evaluators",
  "score_features",
]

EVAL_SUBDIR = result_dirs.EVAL_SUBDIR


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


class Evaluator:
  """Evaluates a model's variables on the query / gallery splits of one evaluation set.

  Attributes:
    model: the run's model (its output dict has 'bn_feat' and the last feature map).
    config: the run config.
    settings: the checked `EvalSettings`.
    config_name: name of the config, in titles and metrics.json (or None).
    eval_set: the evaluated set (`eval_sets.EvalSet`).
    dataset, data_dir: its TFDS name and where it is built.
    mesh: the device mesh.
    query_source, gallery_source: the splits' random-access sources.
    image_size: (H, W) the images are resized to.
    batch_size: host batch size of the extractor (`eval_batch_size`).
    extractor: the jitted `extractor.Extractor`, compiled at the first `run`.
  """

  def __init__(
    self,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    *,
    eval_set: EvalSet | None = None,
    mesh: Mesh | None = None,
    config_name: str | None = None,
    compiled: dict[Any, Any] | None = None,
  ):
    """Checks the settings, loads the sources, builds the extractor.

    Args:
      model: the run's model (`registry.create_model`).
      config: the run config (`configs/base.py`): `input.image_size`,
        `input.eval_batch_size`, `eval.*` (and `input.dataset` / `input.data_dir`
        without `eval_set`).
      eval_set: the set to evaluate; default the training set of `config`.
      mesh: the device mesh ('data' axis); default all devices.
      config_name: name of the config (e.g. 'fsaf_market').
      compiled: jitted functions shared by the evaluators of one model (the extractor
        per batch size, the activation maps), so that each compiles once; default
        this evaluator's own.

    Raises:
      errors.UserError: a bad `config.eval.*` / `config.input.eval_batch_size` value
        (named, with the values allowed), an empty query or gallery split, or no query
        with a positive in the gallery (same pid, other camera).
      FileNotFoundError: the dataset is not built in its data dir (says how to build it).
    """
    self.settings = EvalSettings.from_config(config)
    self.model = model
    self.config = config
    self.config_name = config_name
    if eval_set is None:
      eval_set = eval_sets_lib.eval_sets(_without_datasets(config))[0]
    self.eval_set = eval_set
    self.dataset, self.data_dir = eval_set.name, eval_set.data_dir
    self.mesh = make_mesh() if mesh is None else mesh
    self.query_source, self.gallery_source = load_eval_sources(self.dataset, self.data_dir)
    for split, src in (("query", self.query_source), ("gallery", self.gallery_source)):
      if len(src) == 0:
        raise errors.UserError(f"the {split} split of {self.dataset!r} is empty")
    # Now, not at the first evaluation after an epoch of training: ids are enough.
    (q_pids, q_cams), (g_pids, g_cams) = map(
      eval_pipeline.source_ids, (self.query_source, self.gallery_source)
    )
    try:
      metrics_lib.check_has_positives(q_pids, g_pids, q_cams, g_cams)
    except errors.UserError as e:
      raise errors.UserError(
        f"{self.dataset} in {self.data_dir}: {e}",
        hint="check the query and gallery folders of the download, then rebuild the dataset",
      ) from None
    self.image_size = tuple(int(s) for s in config.input.image_size)
    self.batch_size = eval_batch_size(
      self.settings.batch_size,
      self.mesh,
      max(len(self.query_source), len(self.gallery_source)),
    )
    compiled = {} if compiled is None else compiled
    if ("extractor", self.batch_size) not in compiled:
      compiled["extractor", self.batch_size] = extractor_lib.make_extractor(
        model,
        None,
        batch_size=self.batch_size,
        image_size=self.image_size,
        flip=self.settings.flip,
        mesh=self.mesh,
      )
    self.extractor = compiled["extractor", self.batch_size]
    if "activation_maps" not in compiled:
      compiled["activation_maps"] = activation_lib.make_activation_maps(
        model, image_size=self.image_size
      )
    self._activation_maps = compiled["activation_maps"]

  @functools.cached_property
  def num_classes(self) -> int:
    """Classifier width of the model (its variables' shapes, traced once, not run)."""
    images = jax.ShapeDtypeStruct((1, *self.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(
      functools.partial(self.model.init, train=False), jax.random.key(0), images
    )
    return num_classes_of(shapes)

  @property
  def label(self) -> str:
    """The set's name in tables, results folders and TensorBoard."""
    return self.eval_set.label

  def extract(self, variables: Mapping[str, Any]) -> tuple[EvalFeatures, dict[str, float]]:
    """Embeds both splits with the compiled extractor.

    Args:
      variables: the model's {'params', 'batch_stats'} (host or device arrays; extra
        collections are ignored).

    Returns:
      (features, timing): timing has `extract_query_s`, `extract_gallery_s` and
      `images_per_s` (both splits; the first call includes the compile).

    Raises:
      ValueError: the variables are not FSAF variables of the model's classes.
    """
    got = num_classes_of(variables)
    if got != self.num_classes:
      raise ValueError(
        f"the variables have {got} classes but the evaluator's model has "
        f"{self.num_classes} (model.num_classes)"
      )
    self.extractor.set_variables(variables)
    out, timing = {}, {}
    for split, src in (("query", self.query_source), ("gallery", self.gallery_source)):
      start = time.perf_counter()
      batches = eval_pipeline.create_eval_batches(src, self.batch_size, self.image_size)
      out[split] = extractor_lib.extract_features(self.extractor, batches)
      timing[f"extract_{split}_s"] = time.perf_counter() - start
      if len(out[split][0]) != len(src):  # rows must map to source indices (figure)
        raise RuntimeError(f"{split}: embedded {len(out[split][0])} of {len(src)} images")
      logging.info("Embedded %d %s images in %.1fs", len(src), split, timing[f"extract_{split}_s"])
    total = len(self.query_source) + len(self.gallery_source)
    timing["images_per_s"] = total / (timing["extract_query_s"] + timing["extract_gallery_s"])
    (qf, qp, qc, qn), (gf, gp, gc, gn) = out["query"], out["gallery"]
    return EvalFeatures(qf, gf, qp, gp, qc, gc, qn, gn), timing

  def run(
    self, variables: Mapping[str, Any], *, step: int | None = None, figures: bool = False
  ) -> EvalResult:
    """Embeds and scores both splits with `variables`.

    Args:
      variables: the model's {'params', 'batch_stats'} (trained, restored or freshly
        initialised).
      step: training step of the variables (names the output folder).
      figures: also compute what only the figures show (the activation maps of the
        figure's queries; their function compiles at the first such run).

    Returns:
      The `EvalResult`: its `metrics` are {name: fraction} over
      `metrics.METRIC_NAMES` within the CMC ('rank1', 'rank5', 'rank10', 'rank20',
      'mAP', 'mINP'), and the same prefixed 'rerank/' when `config.eval.rerank`.
    """
    started = time.perf_counter()
    features, timing = self.extract(variables)
    scores = score_features(features, self.settings, mesh=self.mesh)
    timing.update(scores.timing)
    start = time.perf_counter()
    pairs = self._pairs(features, scores.reranked)
    timing["roc_s"] = time.perf_counter() - start
    maps = None
    if figures and self.settings.num_figure_queries > 0:
      maps = self._figure_activation_maps(variables, features)
    return EvalResult(
      eval_set=self.eval_set,
      settings=self.settings,
      config=self.config,
      config_name=self.config_name,
      query_source=self.query_source,
      gallery_source=self.gallery_source,
      step=step,
      metrics=scores.flat(),
      scores=scores,
      features=features,
      timing=timing,
      started=started,
      pairs=pairs,
      roc=None if pairs is None else roc.tpr_at_fpr(pairs),
      activation_maps=maps,
    )

  def _pairs(self, features: EvalFeatures, reranked: np.ndarray | None):
    """The positive / negative pair distances (None, with a warning, if either is empty)."""
    if reranked is None:
      distances = distance_lib.pairwise_distance(
        features.query_feats, features.gallery_feats, metric=self.settings.metric
      )
    else:
      distances = reranked
    try:
      return roc.pair_distances(distances, *features.ids())
    except inputs.EvaluationInputError as e:
      logging.warning("%s: no ROC", e)
      return None

  def _figure_activation_maps(
    self, variables: Mapping[str, Any], features: EvalFeatures
  ) -> ActivationMaps | None:
    queries = figure_lib.figure_queries(features, self.settings.num_figure_queries)
    if queries.size == 0:
      return None
    read = eval_pipeline.ReadEvalRecord(self.query_source, self.image_size)
    images = np.stack([read.map(int(q))["image"] for q in queries])
    return ActivationMaps(queries, images, self._activation_maps(variables, images))


def _without_datasets(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with an empty `eval.datasets` (its training set: the default set)."""
  if not config.eval.get("datasets", ()):
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.datasets = ()
  return config


def build_evaluators(
  model: nn.Module,
  config: ml_collections.ConfigDict,
  *,
  mesh: Mesh | None = None,
  config_name: str | None = None,
) -> list[Evaluator]:
  """One `Evaluator` per evaluation set of `config` (`eval_sets.eval_sets`), each set's
  data built first unless built (`eval_sets.prepare_eval_set`).

  Args:
    model, mesh, config_name: as `Evaluator`.
    config: the run config with absolute data paths.

  Raises:
    What `Evaluator` and `eval_sets.prepare_eval_set` raise.
  """
  EvalSettings.from_config(config)  # a bad setting fails before any dataset build
  mesh = make_mesh() if mesh is None else mesh
  evaluators, compiled = [], {}
  for eval_set in eval_sets_lib.eval_sets(config):
    eval_sets_lib.prepare_eval_set(eval_set)
    evaluators.append(
      Evaluator(
        model,
        config,
        eval_set=eval_set,
        mesh=mesh,
        config_name=config_name,
        compiled=compiled,
      )
    )
  return evaluators


def run_evaluators(
  evaluators: list[Evaluator],
  variables: Mapping[str, Any],
  *,
  step: int | None,
  outdir: epath.PathLike | None,
  write_figure: bool = True,
  checkpoint: str | os.PathLike[str] | None = None,
) -> tuple[list[EvalResult], list[dict[str, Any]]]:
  """Runs every evaluator on `variables`, prints the tables and writes the results.

  Returns:
    (the results, their metrics.json contents), in the evaluators' order
    (`writers.report`).
  """
  results = [ev.run(variables, step=step, figures=write_figure) for ev in evaluators]
  return results, writers.report(results, outdir, write_figure=write_figure, checkpoint=checkpoint)


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
  """One evaluation of `variables` on every evaluation set of `config`: the model built
  for them, its evaluators run, the tables printed, the results written.

  Args:
    config, mesh, config_name: as `build_evaluators` (the model: `config.model` with
      the variables' classes).
    variables: FSAF {'params', 'batch_stats'}, in memory.
    outdir, write_figure, checkpoint: as `writers.write_result`.
    data_dir: where the sets are built; default `config.input.data_dir`.
    step: as `Evaluator.run`.

  Returns:
    The first set's metrics.json content (`writers.write_result`); every set's is
    written.

  Raises:
    errors.UserError: bad eval settings.
    FileNotFoundError: the dataset is not built in `data_dir` (says how to build it).
    ValueError: the config does not match the variables.
  """
  num_classes = num_classes_of(variables)
  if int(config.model.num_classes) not in (-1, num_classes):
    raise ValueError(
      f"config.model.num_classes={config.model.num_classes} but the variables have "
      f"{num_classes} classes"
    )
  if data_dir is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.input.data_dir = os.fspath(data_dir)
  model = registry.create_model(config.model, num_classes)
  evaluators = build_evaluators(model, config, mesh=mesh, config_name=config_name)
  _, written = run_evaluators(
    evaluators,
    variables,
    step=step,
    outdir=outdir,
    write_figure=write_figure,
    checkpoint=checkpoint,
  )
  return written[0]


def check_same_workdir(
  checkpoint: str | os.PathLike[str], owner: epath.Path, workdir: str | os.PathLike[str]
) -> None:
  """Refuses `--checkpoint` of another work dir than `--workdir` (without `--outdir`):
  its results would replace the work dir's own results of that step.

  Raises:
    errors.UserError: `owner` (the checkpoint's work dir) is not `workdir`.
  """
  if not errors.same_file(owner, workdir):
    raise errors.UserError(
      f"--checkpoint={checkpoint} belongs to the work dir {owner}, not --workdir={workdir}: "
      f"its results would replace those of {workdir}",
      hint=f"drop --workdir (the results then go to {owner}/eval/), or pass --outdir=DIR",
    )


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
      are used. The data read: `eval_data` (an empty `input.data_dir` means the
      checkpoint's; a moved work dir's own data is found).
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
      checked before the evaluation); `checkpoint` belongs to another work dir than
      `workdir` and no `outdir` is given (`check_same_workdir`); the named
      `input.manual_dir` holds another copy than the build (`eval_data`).
  """
  if workdir is None and checkpoint is None:
    raise ValueError("pass --workdir (latest checkpoint) or --checkpoint=PATH")
  path = epath.Path(paths.absolute(checkpoint or workdir))
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint: {path} does not exist")
  directory, _ = checkpoint_restore.locate_checkpoint(path)
  owner = directory.parent  # the work dir
  if outdir is None and workdir is not None and checkpoint is not None:
    check_same_workdir(checkpoint, owner, workdir)
  step, saved, variables = checkpoint_restore.restore_for_inference(path)
  where = os.fspath(directory / str(step))
  config = checkpoint_restore.inference_config(
    eval_data.eval_data_config(config, saved, owner), saved, where
  )
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
  logging.info(
    "Evaluating %s (step %s) on %s in %s", where, step, config.input.dataset, config.input.data_dir
  )
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
