"""Tests of `evaluator.Evaluator` / `evaluate_model` on a tiny Market-1501 tree built with
the real builder, and the tiny FSAF model.

References are independent of the evaluator: embeddings from `model.apply` on images
decoded with PIL one at a time and L2-normalised in NumPy; metrics from the per-query
NumPy loop (`tests/reference/reid_metrics_numpy.py`) and the dense NumPy re-ranking
(`tests/reference/rerank_numpy.py`).
"""

import functools
import io
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest

from configs import tiny
from data_pipelines import errors
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation import distance, evaluator, figure, metrics, roc, writers
from fsaf_jax.models import registry
from fsaf_jax.training import train_loop
from tests.reference import reid_metrics_numpy, rerank_numpy, tiny_market, tiny_synthetic_run

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
MAX_RANK = 10
K1, K2, LAMBDA = 6, 3, 0.3
METRIC_KEYS = {"rank1", "rank5", "rank10", "mAP", "mINP", "num_valid", "num_skipped", "cmc"}

pytestmark = pytest.mark.filterwarnings("ignore:.*queries have no positive:UserWarning")


def make_config(data_dir, **eval_fields) -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.input.data_dir = str(data_dir)
  config.eval.max_rank = MAX_RANK
  config.eval.rerank_k1, config.eval.rerank_k2, config.eval.rerank_lambda = K1, K2, LAMBDA
  config.eval.num_figure_queries = 4
  config.eval.update(eval_fields)
  return config


def make_evaluator(config, num_classes=tiny_market.NUM_TRAIN_IDS):
  """The Evaluator of `config` over the tiny model of `num_classes` classes."""
  return evaluator.Evaluator(registry.create_model(config.model, num_classes), config)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tiny_market.build(tmp_path_factory.mktemp("tiny_market"))


@pytest.fixture(scope="module")
def sources(data_dir):
  return evaluator.load_eval_sources(tiny_market.DATASET, data_dir)


@pytest.fixture(scope="module")
def model_and_variables():
  config = tiny.get_config()
  model = registry.create_model(config.model, tiny_market.NUM_TRAIN_IDS)
  h, w = config.input.image_size
  variables = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0), jnp.zeros((1, h, w, 3))
  )
  # Non-trivial BatchNorm statistics, so inference BN is not the identity.
  rng = np.random.default_rng(0)
  stats = jax.tree.map(
    lambda v: v + rng.uniform(0.0, 0.5, v.shape).astype(v.dtype), variables["batch_stats"]
  )
  return model, {"params": variables["params"], "batch_stats": stats}


@pytest.fixture(scope="module")
def variables(model_and_variables):
  return model_and_variables[1]


@pytest.fixture(scope="module")
def features(data_dir, sources, variables):
  config = make_config(data_dir)
  feats, _ = make_evaluator(config).extract(variables)
  return feats


@pytest.fixture(scope="module")
def evaluated(data_dir, variables, tmp_path_factory):
  """evaluate_model with re-ranking, writing into a fresh outdir."""
  outdir = tmp_path_factory.mktemp("outdir")
  config = make_config(data_dir, rerank=True)
  result = evaluator.evaluate_model(
    config, variables, outdir=outdir, step=12, config_name="tiny_test"
  )
  return config, outdir, result


@functools.cache
def _one_image_bn_feat(model):
  """`bn_feat` [C] of one normalised image [1, H, W, 3] (jitted once per model)."""
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False)["bn_feat"][0])


def reference_embeddings(model, variables, src, image_size, flip=False):
  """bn_feat of each image alone (PIL decode + bilinear resize), L2-normalised."""
  h, w = image_size
  bn_feat = _one_image_bn_feat(model)
  out = []
  for i in range(len(src)):
    image = PIL.Image.open(io.BytesIO(src[i]["image"])).convert("RGB")
    x = (np.asarray(image.resize((w, h), PIL.Image.BILINEAR), np.float32) / 255.0 - MEAN) / STD
    feat = np.asarray(bn_feat(variables, x[None]), np.float64)
    if flip:
      mirrored = bn_feat(variables, np.ascontiguousarray(x[None, :, ::-1]))
      feat = 0.5 * (feat + np.asarray(mirrored, np.float64))
    out.append(feat / np.linalg.norm(feat))
  return np.stack(out)


def assert_metrics_equal(got, cmc, mAP, mINP, num_valid, num_skipped):
  np.testing.assert_allclose(got["cmc"], cmc, atol=1e-6)
  np.testing.assert_allclose([got["mAP"], got["mINP"]], [mAP, mINP], atol=1e-6)
  assert (got["num_valid"], got["num_skipped"]) == (num_valid, num_skipped)
  assert got["rank1"] == pytest.approx(cmc[0], abs=1e-6)
  assert got["rank5"] == pytest.approx(cmc[4], abs=1e-6)


# --- Features. --------------------------------------------------------------------------


def test_features_match_independent_embedding(model_and_variables, sources, features):
  model, variables = model_and_variables
  image_size = tiny.get_config().input.image_size
  query, gallery = sources
  assert (len(query), len(gallery)) == (tiny_market.NUM_QUERY, tiny_market.NUM_GALLERY)
  np.testing.assert_allclose(
    features.query_feats, reference_embeddings(model, variables, query, image_size), atol=2e-5
  )
  np.testing.assert_allclose(
    features.gallery_feats, reference_embeddings(model, variables, gallery, image_size), atol=2e-5
  )
  for feats_pids, feats_camids, names, src in (
    (features.query_pids, features.query_camids, features.query_names, query),
    (features.gallery_pids, features.gallery_camids, features.gallery_names, gallery),
  ):
    records = list(src)
    np.testing.assert_array_equal(feats_pids, [r["person_id"] for r in records])
    np.testing.assert_array_equal(feats_camids, [r["camera_id"] for r in records])
    assert names.tolist() == [r["file_name"] for r in records]


def test_flip_follows_config(model_and_variables, data_dir, sources):
  model, variables = model_and_variables
  query, gallery = sources
  feats, _ = make_evaluator(make_config(data_dir, flip=True)).extract(variables)
  expected = reference_embeddings(
    model, variables, query, tiny.get_config().input.image_size, flip=True
  )
  np.testing.assert_allclose(feats.query_feats, expected, atol=2e-5)


# --- Metrics. ---------------------------------------------------------------------------


def test_metrics_equal_direct_scoring_and_numpy_reference(evaluated, features):
  _, _, result = evaluated
  got = result["metrics"]
  assert set(got) == METRIC_KEYS

  direct = metrics.evaluate(
    distance.pairwise_distance(features.query_feats, features.gallery_feats, "cosine"),
    *features.ids(),
    max_rank=MAX_RANK,
  )
  assert_metrics_equal(
    got, direct.cmc, direct.mAP, direct.mINP, direct.num_valid, direct.num_skipped
  )

  q = features.query_feats.astype(np.float64)
  g = features.gallery_feats.astype(np.float64)
  distmat = (
    1.0
    - (q / np.linalg.norm(q, axis=1, keepdims=True))
    @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
  )
  ref = reid_metrics_numpy.eval_market1501(distmat, *features.ids(), max_rank=MAX_RANK)
  assert_metrics_equal(got, *ref)
  # The fixture's query 0007 has only a same-camera match: skipped.
  assert (ref[3], ref[4]) == (tiny_market.NUM_QUERY - 1, 1)
  assert result["num_valid_queries"] == ref[3]
  assert 0.0 < got["mAP"] < 1.0  # the fixture is neither trivial nor hopeless


def test_rerank_metrics_equal_numpy_reference(evaluated, features):
  _, _, result = evaluated
  got = result["metrics_rerank"]
  assert set(got) == METRIC_KEYS
  qf, gf = features.query_feats, features.gallery_feats
  pdist = lambda a, b: np.asarray(distance.pairwise_distance(a, b, "cosine"))  # noqa: E731
  reranked = rerank_numpy.re_ranking(
    pdist(qf, gf), pdist(qf, qf), pdist(gf, gf), k1=K1, k2=K2, lambda_value=LAMBDA
  )
  ref = reid_metrics_numpy.eval_market1501(reranked, *features.ids(), max_rank=MAX_RANK)
  assert_metrics_equal(got, *ref)


def test_rerank_squared_convention_equals_reference_on_squared_distances(features):
  # fast-reid / torchreid square the distances they are given before re-ranking; with
  # config.eval.rerank_squared the evaluator re-ranks as they do.
  eval_config = make_config("/unused", rerank=True).eval
  qf, gf = features.query_feats, features.gallery_feats
  pdist = lambda a, b: np.asarray(distance.pairwise_distance(a, b, "cosine"))  # noqa: E731
  reranked = {}
  for squared in (False, True):
    eval_config.rerank_squared = squared
    _, _, reranked[squared], _ = evaluator.score_features(features, eval_config)
    power = 2 if squared else 1
    want = rerank_numpy.re_ranking(
      pdist(qf, gf) ** power,
      pdist(qf, qf) ** power,
      pdist(gf, gf) ** power,
      k1=K1,
      k2=K2,
      lambda_value=LAMBDA,
    )
    np.testing.assert_allclose(reranked[squared], want, atol=1e-5)
  assert np.abs(reranked[True] - reranked[False]).max() > 1e-3  # the conventions differ


def test_euclidean_metric(data_dir, variables, features):
  config = make_config(data_dir, metric="euclidean")
  result = evaluator.evaluate_model(config, variables, outdir=None, write_figure=False)
  q = features.query_feats.astype(np.float64)
  g = features.gallery_feats.astype(np.float64)
  distmat = (q**2).sum(1)[:, None] + (g**2).sum(1)[None] - 2 * q @ g.T
  ref = reid_metrics_numpy.eval_market1501(distmat, *features.ids(), max_rank=MAX_RANK)
  assert_metrics_equal(result["metrics"], *ref)
  assert result["metrics_rerank"] is None
  assert result["metrics_path"] is None and result["figure_path"] is None


# --- Outputs. ---------------------------------------------------------------------------


def test_metrics_json(evaluated, features):
  config, outdir, result = evaluated
  path = outdir / "eval" / "step_12" / "metrics.json"
  assert result["metrics_path"] == str(path)
  assert (outdir / "eval" / "latest").read_text() == "step_12\n"
  saved = json.loads(path.read_text())
  assert saved == json.loads(json.dumps(result))
  assert saved["config_name"] == "tiny_test"
  assert saved["dataset"] == "market1501"
  assert saved["step"] == 12
  assert (saved["num_query"], saved["num_gallery"]) == (
    tiny_market.NUM_QUERY,
    tiny_market.NUM_GALLERY,
  )
  assert saved["num_valid_queries"] == saved["metrics"]["num_valid"]
  assert saved["feature_dim"] == features.query_feats.shape[1]
  assert saved["eval"]["metric"] == "cosine" and saved["eval"]["rerank"] is True
  assert saved["config"]["input"]["dataset"] == config.input.dataset
  assert saved["config"]["eval"]["max_rank"] == MAX_RANK
  for key in ("extract_query_s", "extract_gallery_s", "images_per_s", "score_s", "rerank_s"):
    assert saved["timing"][key] > 0
  assert saved["timing"]["total_s"] >= saved["timing"]["extract_query_s"]


def test_ranked_list_png(evaluated):
  config, outdir, result = evaluated
  path = outdir / "eval" / "step_12" / "ranked_list.png"
  assert result["figure_path"] == str(path)
  assert path.stat().st_size > 0
  with PIL.Image.open(path) as image:
    assert image.format == "PNG"
    image.load()
    w, h = image.size
  assert w > 0 and h > 0
  assert w > h  # 4 rows of a query and its top-10


def test_no_figure_when_disabled(data_dir, variables, tmp_path):
  result = evaluator.evaluate_model(
    make_config(data_dir), variables, outdir=tmp_path, write_figure=False
  )
  # No step: its own folder, never the `latest` one.
  assert (tmp_path / "eval" / "step_unknown" / "metrics.json").is_file()
  assert not (tmp_path / "eval" / "step_unknown" / "ranked_list.png").exists()
  assert not (tmp_path / "eval" / "latest").exists()
  assert result["figure_path"] is None


# --- The figure's inputs. ---------------------------------------------------------------


@pytest.mark.parametrize("rerank", [False, True])
def test_figure_gets_the_drawn_queries(features, sources, monkeypatch, tmp_path, rerank):
  """The figure sees the chosen queries' distance rows, ids and decoded images."""
  calls = []
  monkeypatch.setattr(figure, "ranked_list_figure", lambda *a, **k: calls.append((a, k)))
  query, gallery = sources
  full = np.asarray(distance.pairwise_distance(features.query_feats, features.gallery_feats))
  reranked = full[:, ::-1].copy() if rerank else None  # any [M, N] matrix will do
  drawn = figure.write_ranked_list_figure(
    tmp_path / "f.png", features, query, gallery, metric="cosine", num_queries=3,
    reranked=reranked, title="t",
  )  # fmt: skip
  chosen = figure.figure_queries(features, 3)
  assert drawn == 3 and len(calls) == 1
  (dist, q_pids, g_pids, q_camids, g_camids), kwargs = calls[0]
  np.testing.assert_allclose(dist, (reranked if rerank else full)[chosen], atol=1e-6)
  np.testing.assert_array_equal(q_pids, features.query_pids[chosen])
  np.testing.assert_array_equal(q_camids, features.query_camids[chosen])
  np.testing.assert_array_equal(g_pids, features.gallery_pids)
  np.testing.assert_array_equal(g_camids, features.gallery_camids)
  assert list(kwargs["query_indices"]) == [0, 1, 2] and kwargs["top_k"] == 10
  assert kwargs["path"] == tmp_path / "f.png" and kwargs["title"] == "t"
  for i, q in enumerate(chosen):
    expected = np.asarray(PIL.Image.open(io.BytesIO(query[int(q)]["image"])).convert("RGB"))
    np.testing.assert_array_equal(kwargs["query_images"](i), expected)
  expected = np.asarray(PIL.Image.open(io.BytesIO(gallery[5]["image"])).convert("RGB"))
  np.testing.assert_array_equal(kwargs["gallery_images"](5), expected)


def test_figure_queries_have_positives_and_spread(features):
  chosen = figure.figure_queries(features, 3)
  q_pids, g_pids, q_camids, g_camids = features.ids()
  valid = [
    i for i in range(len(q_pids)) if np.any((g_pids == q_pids[i]) & (g_camids != q_camids[i]))
  ]
  assert len(chosen) == 3 and set(chosen) <= set(valid)
  assert chosen[0] == valid[0] and chosen[-1] == valid[-1]
  assert list(figure.figure_queries(features, 100)) == valid
  assert len(figure.figure_queries(features, 0)) == 0


# --- Settings and errors. ---------------------------------------------------------------


def test_eval_batch_size_fits_the_mesh(num_devices):
  mesh = make_mesh()
  assert evaluator.eval_batch_size(16, mesh, 1000) == 16
  assert evaluator.eval_batch_size(6, mesh, 1000) == -(-6 // num_devices) * num_devices
  # Capped at the image count (rounded up to the devices): no batch of padding only.
  assert evaluator.eval_batch_size(128, mesh, 19) == -(-19 // num_devices) * num_devices
  with pytest.raises(ValueError, match="eval_batch_size"):
    evaluator.eval_batch_size(0, mesh, 10)


def test_dataset_not_built_says_how_to_build(variables, tmp_path):
  config = make_config(tmp_path / "empty_data_dir")
  with pytest.raises(FileNotFoundError, match="python -m data_pipelines.datasets.build"):
    evaluator.evaluate_model(config, variables, outdir=tmp_path)
  assert not (tmp_path / "eval").exists()


def test_config_must_match_the_variables(data_dir, variables, tmp_path):
  config = make_config(data_dir)
  config.model.num_classes = tiny_market.NUM_TRAIN_IDS + 1
  with pytest.raises(ValueError, match="model.num_classes"):
    evaluator.evaluate_model(config, variables, outdir=tmp_path)
  with pytest.raises(ValueError, match="classifier"):
    evaluator.evaluate_model(make_config(data_dir), {"params": {}}, outdir=tmp_path)


def test_unknown_metric_is_named(data_dir, variables, tmp_path):
  with pytest.raises(ValueError, match="'manhattan'"):
    evaluator.evaluate_model(make_config(data_dir, metric="manhattan"), variables, outdir=tmp_path)


# --- Checkpoint configs. ----------------------------------------------------------------


def test_inference_config_checks_network_and_input_size():
  saved = tiny.get_config()
  saved.model.num_classes = 751
  saved.input.data_dir = "/abs/data/tfds"
  saved.optim.base_lr = 1.0  # training-only fields may differ
  config = tiny.get_config()
  config.input.data_dir = ""
  config.input.dataset = "dukemtmc_reid"  # cross-domain evaluation is allowed
  config.model.dtype = "bfloat16"  # so is the compute dtype
  resolved = checkpoint_restore.inference_config(config, saved, "/ckpt")
  assert resolved.model.num_classes == 751 and resolved.input.data_dir == "/abs/data/tfds"
  assert resolved.input.dataset == "dukemtmc_reid" and config.model.num_classes == -1

  config.input.data_dir = "/elsewhere"
  assert checkpoint_restore.inference_config(config, saved, "/ckpt").input.data_dir == "/elsewhere"

  bad = tiny.get_config()
  bad.model.widths = (8, 16, 32, 128)
  bad.input.image_size = (128, 64)
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError) as e:
    checkpoint_restore.inference_config(bad, saved, "/ckpt")
  assert "model.widths" in str(e.value) and "input.image_size" in str(e.value)
  assert "/ckpt" in str(e.value)
  bad = tiny.get_config()
  bad.model.num_classes = 10
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError, match="model.num_classes"):
    checkpoint_restore.inference_config(bad, saved, "/ckpt")


def test_load_eval_sources_order(data_dir):
  query, gallery = evaluator.load_eval_sources(tiny_market.DATASET, data_dir)
  names = [r["file_name"] for r in gallery]
  assert names == sorted(names) and not any(n.startswith("-1") for n in names)
  assert len(query) == len(source_lib.load_source(tiny_market.DATASET, "query", data_dir))


# --- The Evaluator: settings checked at construction, one compile, flat metrics. --------


@pytest.mark.parametrize(
  "field, value, allowed",
  [
    ("metric", "cosin", "'cosine', 'euclidean'"),
    ("max_rank", 0, "integer >= 1"),
    ("query_chunk", -5, "integer >= 1"),
    ("shard_gallery", "on", "True or False"),
    ("rerank", "yes", "True or False"),
    ("rerank_k1", 2.5, "integer >= 1"),
    ("rerank_k2", 0, "integer >= 1"),
    ("rerank_lambda", 1.5, "in [0, 1]"),
    ("rerank_squared", 1, "True or False"),
    ("flip", None, "True or False"),
    ("num_figure_queries", -1, "integer >= 0"),
  ],
)
def test_bad_eval_setting_fails_at_construction(data_dir, field, value, allowed):
  config = make_config(data_dir)
  # A config file may set any type (overrides of a type-safe ConfigDict cannot).
  config.eval = ml_collections.ConfigDict({**config.eval.to_dict(), field: value})
  with pytest.raises(errors.UserError) as e:
    make_evaluator(config)
  message = str(e.value)
  assert f"config.eval.{field}={value!r}" in message and allowed in message


def test_bad_batch_size_and_unknown_eval_field_fail_at_construction(data_dir):
  config = make_config(data_dir)
  config.input.eval_batch_size = 0
  with pytest.raises(errors.UserError, match=r"config.input.eval_batch_size=0: .*>= 1"):
    make_evaluator(config)
  config = make_config(data_dir)
  with config.unlocked():
    config.eval.rerank_lamda = 0.5
  with pytest.raises(errors.UserError, match="config.eval.rerank_lamda") as e:
    make_evaluator(config)
  assert e.value.hint == "did you mean config.eval.rerank_lambda?"


def test_bad_eval_setting_fails_before_the_first_training_step(data_root, tmp_path, monkeypatch):
  steps = []
  make_train_step = train_loop.make_train_step

  def counting_make_train_step(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)
    return lambda state, batch: (steps.append(1), step_fn(state, batch))[1]

  monkeypatch.setattr(train_loop, "make_train_step", counting_make_train_step)
  config = tiny_synthetic_run.config(data_root)
  config.eval.metric = "cosin"
  with pytest.raises(errors.UserError, match=r"config.eval.metric='cosin'"):
    train_loop.train_and_evaluate(config, tmp_path)
  assert not steps
  assert not (tmp_path / "checkpoints").exists() or not any(
    p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir()
  )
  assert not (tmp_path / "eval").exists()


def test_extractor_compiles_once_across_runs(data_dir, variables):
  config = make_config(data_dir, rerank=True)
  ev = make_evaluator(config)
  assert ev.extractor.num_traces == 0
  first = ev.run(variables, step=1)
  first_features = first.features
  # Other variables of the same shapes (as the training loop's state a few epochs on).
  rng = np.random.default_rng(1)
  moved = jax.tree.map(
    lambda v: v + rng.normal(0.0, 0.05, v.shape).astype(v.dtype), jax.device_get(variables)
  )
  second = ev.run(moved, step=2)
  assert ev.extractor.num_traces == 1
  assert second.step == 2
  assert np.abs(second.features.query_feats - first_features.query_feats).max() > 1e-3
  # Each run equals a fresh one-shot evaluation of its variables.
  for v, got in ((variables, first), (moved, second)):
    fresh = evaluator.evaluate_model(config, v, outdir=None, write_figure=False)
    for name, value in got.metrics.items():
      section = fresh["metrics_rerank"] if name.startswith("rerank/") else fresh["metrics"]
      assert value == pytest.approx(section[name.removeprefix("rerank/")], abs=1e-12)


def test_run_returns_the_declared_flat_metrics(data_dir, variables, tmp_path):
  ev = make_evaluator(make_config(data_dir, rerank=True))
  result = ev.run(variables, step=3)
  flat = result.metrics
  # max_rank 10: rank20 is beyond the CMC.
  plain = [n for n in metrics.METRIC_NAMES if n != "rank20"]
  assert list(flat) == plain + ["rerank/" + n for n in plain]
  assert all(isinstance(v, float) for v in flat.values())
  (written,) = writers.report([result], tmp_path, write_figure=False)
  for name in plain:
    assert flat[name] == written["metrics"][name]
    assert flat["rerank/" + name] == written["metrics_rerank"][name]
  assert (tmp_path / "eval" / "step_3" / "metrics.json").is_file()
  assert (tmp_path / "eval" / "latest").read_text() == "step_3\n"


def test_run_refuses_variables_of_another_model(data_dir, variables):
  ev = make_evaluator(make_config(data_dir), num_classes=tiny_market.NUM_TRAIN_IDS + 1)
  with pytest.raises(ValueError, match="classes"):
    ev.run(variables)


def test_a_listed_set_writes_its_own_folder(data_dir, variables, tmp_path):
  # config.eval.datasets naming the training set: results in eval/step_<N>/<set>/, the
  # same metrics as the default layout's, TensorBoard scalars prefixed by the set.
  config = make_config(data_dir, datasets=(tiny_market.DATASET,))
  model = registry.create_model(config.model, tiny_market.NUM_TRAIN_IDS)
  (ev,) = evaluator.build_evaluators(model, config)
  results, (written,) = evaluator.run_evaluators(
    [ev], variables, step=4, outdir=tmp_path, write_figure=False
  )
  folder = tmp_path / "eval" / "step_4" / tiny_market.DATASET
  assert written["metrics_path"] == str(folder / "metrics.json")
  assert not (tmp_path / "eval" / "step_4" / "metrics.json").exists()
  assert (tmp_path / "eval" / "latest").read_text() == "step_4\n"
  default = evaluator.evaluate_model(make_config(data_dir), variables, outdir=None)
  assert written["metrics"] == default["metrics"] and written["roc"] == default["roc"]
  scalars = writers.scalars(results)
  assert scalars[f"{tiny_market.DATASET}/mAP"] == written["metrics"]["mAP"]
  assert scalars[f"{tiny_market.DATASET}/TPR@FPR=1e-02"] == written["roc"]["TPR@FPR=1e-02"]


def test_diagnostic_figures_and_roc_in_metrics_json(evaluated, features):
  _, outdir, result = evaluated
  folder = outdir / "eval" / "step_12"
  assert result["figure_paths"] == {
    name: str(folder / f"{name}.png")
    for name in ("ranked_list", "distances", "roc", "activation_maps")
  }
  for path in result["figure_paths"].values():
    with PIL.Image.open(path) as image:
      assert image.format == "PNG" and min(image.size) > 100
  # TPR@FPR of the re-ranked distances (re-ranking is on), as the reference computes it.
  qf, gf = features.query_feats, features.gallery_feats
  pdist = lambda a, b: np.asarray(distance.pairwise_distance(a, b, "cosine"))  # noqa: E731
  reranked = rerank_numpy.re_ranking(
    pdist(qf, gf), pdist(qf, qf), pdist(gf, gf), k1=K1, k2=K2, lambda_value=LAMBDA
  )
  pairs = roc.pair_distances(reranked, *features.ids())
  want = roc.tpr_at_fpr(pairs)
  assert result["roc"].keys() == want.keys()
  for key, value in want.items():
    assert result["roc"][key] == pytest.approx(value, abs=1e-6)
