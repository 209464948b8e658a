"""Misused `fsaf_jax.score` inputs: what `extract` writes (two files), files that are not
.npz archives, one extract file alone, degenerate features."""

import warnings

import numpy as np
import pytest

from fsaf_jax import score
from fsaf_jax.core import errors
from fsaf_jax.evaluation import scoring
from fsaf_jax.evaluation.inputs import EvaluationInputError
from fsaf_jax.evaluation.settings import EvalSettings


def _sets(seed=0, m=6, n=20, dim=8):
  rng = np.random.default_rng(seed)
  q_pids = np.arange(1, m + 1)
  g_pids = np.concatenate([q_pids, rng.integers(1, m + 3, n - m)])
  return {
    "query_feats": rng.normal(size=(m, dim)).astype(np.float32),
    "gallery_feats": rng.normal(size=(n, dim)).astype(np.float32),
    "query_pids": q_pids,
    "gallery_pids": g_pids,
    "query_camids": np.zeros(m, int),
    "gallery_camids": np.ones(n, int),
  }


def _extract_file(path, arrays, side):
  """A file as `python -m fsaf_jax.extract` writes it, for one side."""
  n = len(arrays[f"{side}_pids"])
  np.savez(
    path,
    feats=arrays[f"{side}_feats"],
    file_names=np.array([f"{side}_{i}.jpg" for i in range(n)]),
    pids=arrays[f"{side}_pids"].astype(np.int32),
    camids=arrays[f"{side}_camids"].astype(np.int32),
  )
  return str(path)


def test_two_extract_files_score_as_the_combined_file(tmp_path):
  arrays = _sets()
  np.savez(tmp_path / "both.npz", **arrays)
  q = _extract_file(tmp_path / "query.npz", arrays, "query")
  g = _extract_file(tmp_path / "gallery.npz", arrays, "gallery")
  from_two = score.load_query_gallery(q, g)
  from_one = score.load_features(str(tmp_path / "both.npz"))
  assert from_two.keys() == from_one.keys()
  for k in from_one:
    np.testing.assert_array_equal(from_two[k], from_one[k])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    a = scoring.score_features(score.as_features(from_two), EvalSettings()).metrics
    b = scoring.score_features(score.as_features(from_one), EvalSettings()).metrics
  np.testing.assert_array_equal(np.asarray(a.cmc), np.asarray(b.cmc))
  assert float(a.mAP) == float(b.mAP)


def test_one_extract_file_alone_says_to_pass_two(tmp_path):
  q = _extract_file(tmp_path / "query.npz", _sets(), "query")
  with pytest.raises(EvaluationInputError, match="holds one image set .*extract") as e:
    score.load_features(q)
  assert "QUERY.npz GALLERY.npz" in e.value.hint


def test_extract_files_without_identities_or_swapped_formats(tmp_path):
  arrays = _sets()
  np.savez(tmp_path / "both.npz", **arrays)
  q = _extract_file(tmp_path / "query.npz", arrays, "query")
  unnamed = dict(arrays, gallery_pids=-np.ones(20, int), gallery_camids=-np.ones(20, int))
  g = _extract_file(tmp_path / "unnamed.npz", unnamed, "gallery")
  with pytest.raises(EvaluationInputError, match=r"unnamed.npz \(gallery\): no file name follows"):
    score.load_query_gallery(q, g)
  with pytest.raises(EvaluationInputError, match="both.npz holds both a query and a gallery"):
    score.load_query_gallery(q, str(tmp_path / "both.npz"))
  np.savez(tmp_path / "nofeats.npz", pids=np.ones(3, int), camids=np.ones(3, int))
  with pytest.raises(
    EvaluationInputError, match=r"nofeats.npz \(gallery\): missing key\(s\) feats"
  ):
    score.load_query_gallery(q, str(tmp_path / "nofeats.npz"))
  short = dict(arrays, gallery_pids=arrays["gallery_pids"][:-1])
  g = _extract_file(tmp_path / "short.npz", short, "gallery")
  with pytest.raises(EvaluationInputError, match=r"short.npz \(gallery\): pids has 19 entries"):
    score.load_query_gallery(q, g)


def test_files_that_are_not_npz_archives(tmp_path):
  (tmp_path / "empty.npz").write_bytes(b"")
  np.save(tmp_path / "feats.npy", np.zeros((3, 4)))
  (tmp_path / "text.npz").write_text("hello")
  (tmp_path / "dir.npz").mkdir()
  np.savez(tmp_path / "objects.npz", **dict(_sets(), query_pids=np.array([1, "a"], object)))
  cases = {
    "empty.npz": r"empty.npz as a .npz file: it is empty \(0 bytes",
    "feats.npy": r"feats.npy is a .npy file \(one array of shape \(3, 4\)\)",
    "text.npz": r"text.npz as a .npz file: no zip header",
    "dir.npz": r"dir.npz is a directory",
    "missing.npz": r"missing.npz: no such file",
    "objects.npz": r"objects.npz as a .npz file: .*allow_pickle",
  }
  for name, message in cases.items():
    with pytest.raises(EvaluationInputError, match=message):
      score.load_features(str(tmp_path / name))
    if name != "objects.npz":  # (that one holds both sets)
      # The same message as the gallery file of a query/gallery pair.
      q = _extract_file(tmp_path / "q.npz", _sets(), "query")
      with pytest.raises(EvaluationInputError, match=message):
        score.load_query_gallery(q, str(tmp_path / name))


@pytest.mark.parametrize(
  "change, warning",
  [
    (dict(query_feats=np.zeros((6, 8), np.float32)), r"query_feats: all 6 rows are zero"),
    (dict(gallery_feats=np.ones((20, 8), np.float32)), r"gallery_feats: all 20 rows are ident"),
  ],
)
def test_degenerate_features_are_scored_with_a_warning(tmp_path, change, warning):
  np.savez(tmp_path / "f.npz", **dict(_sets(), **change))
  with pytest.warns(UserWarning, match=warning):
    score.load_features(str(tmp_path / "f.npz"))


def test_some_zero_rows_warn_with_the_count_and_normal_features_do_not(tmp_path):
  arrays = _sets()
  arrays["gallery_feats"][[2, 5, 7]] = 0
  np.savez(tmp_path / "f.npz", **arrays)
  with pytest.warns(UserWarning, match=r"gallery_feats: 3 of 20 rows are zero vectors"):
    score.load_features(str(tmp_path / "f.npz"))
  np.savez(tmp_path / "ok.npz", **_sets())
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    score.load_features(str(tmp_path / "ok.npz"))


def test_non_finite_features_are_an_error_naming_the_entry(tmp_path):
  arrays = _sets()
  arrays["query_feats"][4, 1] = np.inf
  q = _extract_file(tmp_path / "q.npz", arrays, "query")
  g = _extract_file(tmp_path / "g.npz", arrays, "gallery")
  with pytest.raises(EvaluationInputError, match=r"q.npz \(query\): feats .*\[4, 1\] = .*inf"):
    score.load_query_gallery(q, g)


def test_json_output_that_is_an_input_is_refused(tmp_path):
  features = tmp_path / "feats.npz"
  features.write_bytes(b"PK the features")
  for json_path in (features, tmp_path / "." / "feats.npz"):
    with pytest.raises(errors.UserError, match=r"--json=.*feats.npz is the input"):
      score.check_json_is_not_an_input(str(json_path), [str(tmp_path / "q.npz"), str(features)])
  score.check_json_is_not_an_input(str(tmp_path / "m.json"), [str(features)])  # fine
  assert features.read_bytes() == b"PK the features"
