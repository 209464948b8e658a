"""Tests of `python -m fsaf_jax.score`: the table, the JSON, and bad-input messages."""

import json
import os
import pathlib
import sys
import warnings

import numpy as np
import pytest

from fsaf_jax import score
from fsaf_jax.evaluation import distance, metrics, rerank, scoring
from fsaf_jax.evaluation.inputs import EvaluationInputError
from fsaf_jax.evaluation.settings import EvalSettings
from tests.reference import ceiling, reid_problems

REPO = pathlib.Path(__file__).resolve().parents[2]


def _arrays(seed=0, m=60, n=300):
  p = reid_problems.make_problem(seed, num_query=m, num_gallery=n, num_ids=40, dim=16)
  return {
    "query_feats": p.q_feats,
    "gallery_feats": p.g_feats,
    "query_pids": p.q_pids,
    "gallery_pids": p.g_pids,
    "query_camids": p.q_camids,
    "gallery_camids": p.g_camids,
  }


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return ceiling.run(
    [sys.executable, "-m", "fsaf_jax.score", *map(str, args)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    ceiling=ceiling.LONG,
  )


def test_cli_table_and_json(tmp_path):
  arrays = _arrays()
  path = tmp_path / "feats.npz"
  np.savez(path, **arrays)
  out = tmp_path / "m.json"
  proc = _run(path, "--metric=euclidean", "--rerank", f"--json={out}", "--max_rank=20")
  assert proc.returncode == 0, proc.stderr
  # The numbers printed and written are those of the library calls.
  ids = [arrays[k] for k in score.ID_KEYS]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    plain = metrics.evaluate(
      np.asarray(
        distance.pairwise_distance(arrays["query_feats"], arrays["gallery_feats"], "euclidean")
      ),
      *ids,
      max_rank=20,
    )
    rr = metrics.evaluate(
      rerank.re_ranking_features(
        arrays["query_feats"], arrays["gallery_feats"], metric="euclidean"
      ),
      *ids,
      max_rank=20,
    )
  lines = proc.stdout.splitlines()
  row = next(line for line in lines if line.startswith("plain")).split()
  assert row[1] == f"{100 * plain.cmc[0]:.2f}" and row[4] == f"{100 * plain.mAP:.2f}"
  row = next(line for line in lines if line.startswith("re-ranked")).split()
  assert row[4] == f"{100 * rr.mAP:.2f}" and row[5] == f"{100 * rr.mINP:.2f}"
  assert f"score: warning: {plain.num_skipped} of 60 queries have no positive" in proc.stderr
  data = json.loads(out.read_text())
  assert data["metric"] == "euclidean" and data["rerank"]["k1"] == 20
  assert data["plain"]["mAP"] == pytest.approx(plain.mAP, abs=1e-12)
  assert data["re-ranked"]["rank1"] == pytest.approx(rr.cmc[0], abs=1e-12)
  assert len(data["plain"]["cmc"]) == 20


def test_cli_bad_input_exits_with_message(tmp_path):
  arrays = _arrays()
  del arrays["gallery_camids"]
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  proc = _run(path)
  assert proc.returncode == 2
  assert "ERROR:" in proc.stderr and "missing key(s) gallery_camids" in proc.stderr
  assert "Traceback" not in proc.stderr


def _saved(tmp_path, **changes):
  arrays = _arrays()
  arrays.update(changes)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  path = tmp_path / "f.npz"
  np.savez(path, **arrays)
  return str(path)


def test_load_features_messages(tmp_path):
  good = _arrays()
  with pytest.raises(EvaluationInputError, match="missing key.*query_feats.*the file has"):
    score.load_features(_saved(tmp_path, query_feats=None))
  nan = good["gallery_feats"].copy()
  nan[7, 3] = np.nan
  with pytest.raises(EvaluationInputError, match=r"gallery_feats \(shape \(300, 16\)\).*\[7, 3\]"):
    score.load_features(_saved(tmp_path, gallery_feats=nan))
  with pytest.raises(
    EvaluationInputError, match=r"query_pids has shape \(59,\) but query_feats has 60 rows"
  ):
    score.load_features(_saved(tmp_path, query_pids=good["query_pids"][:59]))
  with pytest.raises(EvaluationInputError, match=r"gallery_camids has shape \(299,\)"):
    score.load_features(_saved(tmp_path, gallery_camids=good["gallery_camids"][:-1]))
  with pytest.raises(EvaluationInputError, match=r"query_feats is empty \(shape \(0, 16\)\)"):
    score.load_features(
      _saved(
        tmp_path,
        query_feats=np.zeros((0, 16), np.float32),
        query_pids=np.zeros(0, int),
        query_camids=np.zeros(0, int),
      )
    )
  with pytest.raises(EvaluationInputError, match="different feature dimensions"):
    score.load_features(_saved(tmp_path, query_feats=good["query_feats"][:, :8]))
  with pytest.raises(EvaluationInputError, match="Cannot read .* as a .npz"):
    (tmp_path / "junk.npz").write_text("not a zip")
    score.load_features(str(tmp_path / "junk.npz"))
  with pytest.raises(EvaluationInputError, match="Cannot read"):
    score.load_features(str(tmp_path / "missing.npz"))


def test_score_features_no_positive_and_skipped(tmp_path):
  arrays = score.load_features(_saved(tmp_path))
  with pytest.warns(UserWarning, match=r"\d+ of 60 queries have no positive"):
    results = scoring.score_features(score.as_features(arrays), EvalSettings()).rows()
  assert results["plain"].num_skipped > 0 and "re-ranked" not in results
  arrays["query_pids"] = arrays["query_pids"] + 1000
  with pytest.raises(EvaluationInputError, match="None of the 60 queries has a positive"):
    scoring.score_features(score.as_features(arrays), EvalSettings())


def test_score_features_rerank_convention():
  # rerank_squared=True is the squared-input convention of rerank.re_ranking_features.
  arrays = _arrays()
  ids = [arrays[k] for k in score.ID_KEYS]
  qf, gf = arrays["query_feats"], arrays["gallery_feats"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    got = {
      sq: scoring.score_features(
        score.as_features(arrays), EvalSettings(rerank=True, rerank_squared=sq)
      ).metrics_rerank
      for sq in (False, True)
    }
    for sq in (False, True):
      want = metrics.evaluate(rerank.re_ranking_features(qf, gf, squared=sq), *ids)
      assert got[sq].mAP == pytest.approx(want.mAP, abs=1e-12)
      np.testing.assert_array_equal(got[sq].cmc, want.cmc)
  assert got[True].mAP != got[False].mAP
