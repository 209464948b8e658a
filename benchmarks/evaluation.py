r"""Speed and memory of the evaluation (metrics, re-ranking) at Market-1501 / MSMT17 scale.

  python benchmarks/evaluation.py                    # ~10 min on a 2-core CPU (unloaded)
  python benchmarks/evaluation.py --skip=msmt        # without the MSMT17-scale memory run

Prints, under a header naming the machine (CPU, cores, load, versions, XLA_FLAGS):

* Metrics at Market-1501 scale (3,368 queries x 15,913 gallery, 2,048-d random
  features with identity structure, 6 cameras, 18% distractors): the query-gallery
  distance product (`distance.pairwise_distance`), the JAX evaluator from that
  distance matrix (`metrics.evaluate`) and from the features (`metrics.evaluate_features`,
  product included), and the per-query NumPy reference
  (`tests/reference/reid_metrics_numpy.py`, a stable argsort + loop), with the ratios
  against the targets: reference / evaluate >= 5, evaluate_features / product <= 1.5.
* k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3): JAX (`rerank.re_ranking` from
  the q-g, q-q, g-g distance blocks) against the per-row NumPy reference
  (`tests/reference/rerank_numpy.py`) at a reduced scale (`--rerank_ref_fraction` of
  Market's queries and gallery: the reference holds ~6 dense [A, A] arrays, ~9 GB at
  full scale), target ratio >= 10; the JAX time at full Market scale; and, in
  subprocesses, the peak RSS of `rerank.re_ranking_features` at full Market scale
  (target < 4 GiB) and of the reference at the reduced scale.
* The peak RSS (`VmHWM`, in a fresh subprocess) and time of `evaluate_features` at
  MSMT17 scale (11,659 x 82,161, 2,048-d; must fit in 8 GiB).

Every timing is the median over `--rounds` rounds after a warm-up call (compilation
excluded), the runners of one table interleaved round by round (`harness.interleave`)
so that load changes hit them alike; figures on a shared machine are noisy, the ratios
less so. Results are checked against the references in the same run.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import Runner, interleave, machine_lines  # noqa: E402

MARKET = {"num_query": 3368, "num_gallery": 15913, "num_ids": 750, "num_cams": 6}
MSMT = {"num_query": 11659, "num_gallery": 82161, "num_ids": 3060, "num_cams": 15}
DIM = 2048

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed rounds per runner (after a warm-up).")
_SKIP = flags.DEFINE_list("skip", [], "Sections to skip: metrics, rerank, msmt.")
_REF_FRACTION = flags.DEFINE_float(
  "rerank_ref_fraction", 0.5, "Scale (of Market's query and gallery) of the re-ranking reference."
)
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process.")


def synthetic_features(
  num_query: int,
  num_gallery: int,
  num_ids: int,
  num_cams: int,
  dim: int = DIM,
  distractor_frac: float = 0.18,
  noise: float = 3.0,
  seed: int = 0,
) -> dict[str, np.ndarray]:
  """Random features with identity structure: id centre + heavy-tailed per-image noise.

  Each image gets `centre[pid] + s * N(0, I)` with s log-normal around `noise`, so a
  few images are hard (Rank-1 ~97%, mAP ~74%, mINP ~21% at Market scale with cosine).
  Distractors (pid 0) are pure noise. float32 throughout, built in chunks.
  """
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
  n_distract = int(num_gallery * distractor_frac)
  g_pids = np.concatenate(
    [rng.integers(1, num_ids + 1, num_gallery - n_distract), np.zeros(n_distract, np.int64)]
  )
  q_pids = rng.integers(1, num_ids + 1, num_query)

  def feats(pids):
    out = np.empty((pids.shape[0], dim), np.float32)
    for s in range(0, pids.shape[0], 8192):
      p = pids[s : s + 8192]
      scale = (noise * np.exp(0.35 * rng.standard_normal(p.shape[0]))).astype(np.float32)
      f = rng.standard_normal((p.shape[0], dim), dtype=np.float32) * scale[:, None]
      f[p > 0] += centres[p[p > 0]]
      f[p == 0] *= np.float32(np.sqrt(1 + 1 / noise**2))
      out[s : s + 8192] = f
    return out

  return {
    "query_feats": feats(q_pids),
    "gallery_feats": feats(g_pids),
    "query_pids": q_pids,
    "gallery_pids": g_pids,
    "query_camids": rng.integers(0, num_cams, num_query),
    "gallery_camids": rng.integers(0, num_cams, num_gallery),
  }


def _ids(data):
  return data["query_pids"], data["gallery_pids"], data["query_camids"], data["gallery_camids"]


def _peak_rss_gib() -> float:
  """This process's RSS high-water mark, GiB.

  `VmHWM` of /proc/self/status: unlike `ru_maxrss`, which Linux carries over from the
  parent across fork + exec, it starts afresh in the child.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _fmt_table(rows: list[tuple[str, ...]]) -> list[str]:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  out = []
  for k, r in enumerate(rows):
    out.append(
      "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
      )
    )
    if k == 0:
      out.append("  ".join("-" * w for w in widths))
  return out


def metrics_section(rounds: int) -> list[str]:
  import jax
  import jax.numpy as jnp

  from fsaf_jax.evaluation import distance, metrics
  from tests.reference import reid_metrics_numpy

  data = synthetic_features(**MARKET)
  ids = _ids(data)
  qf, gf = jnp.asarray(data["query_feats"]), jnp.asarray(data["gallery_feats"])
  distmat = np.asarray(distance.pairwise_distance(qf, gf, "cosine"))
  results = {}

  def quiet(name, fn):
    def call():
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results[name] = fn()

    return call

  runners = [
    Runner(
      "metrics",
      "distance product q x g (pairwise_distance)",
      quiet("product", lambda: jax.block_until_ready(distance.pairwise_distance(qf, gf, "cosine"))),
      1,
      None,
    ),
    Runner(
      "metrics",
      "JAX evaluate(distmat)",
      quiet("jax", lambda: metrics.evaluate(distmat, *ids, max_rank=50)),
      1,
      None,
    ),
    Runner(
      "metrics",
      "JAX evaluate_features (product included)",
      quiet(
        "jax_feats", lambda: metrics.evaluate_features(qf, gf, *ids, metric="cosine", max_rank=50)
      ),
      1,
      None,
    ),
    Runner(
      "metrics",
      "NumPy reference(distmat)",
      quiet("ref", lambda: reid_metrics_numpy.eval_market1501(distmat, *ids, max_rank=50)),
      1,
      None,
    ),
  ]
  interleave(runners, rounds)
  ref_cmc, ref_map, ref_minp, _, _ = results["ref"]
  diffs = [
    max(np.abs(r.cmc - ref_cmc).max(), abs(r.mAP - ref_map), abs(r.mINP - ref_minp))
    for r in (results["jax"], results["jax_feats"])
  ]
  t = {r.name: r.median for r in runners}
  product, jax_dm, jax_f, ref = (r.median for r in runners)
  r = results["jax"]
  lines = [
    f"Metrics, Market-1501 scale: {ids[0].shape[0]:,} x {ids[1].shape[0]:,}, {DIM}-d, cosine "
    f"(Rank-1 {100 * r.cmc[0]:.1f}, mAP {100 * r.mAP:.1f}, mINP {100 * r.mINP:.1f}, "
    f"{r.num_valid} valid queries); max |JAX - reference| = {max(diffs):.1e}",
    *_fmt_table(
      [("runner", "median s", "all rounds s")]
      + [
        (name, f"{sec:.2f}", " ".join(f"{x:.2f}" for x in rr.times))
        for (name, sec), rr in zip(t.items(), runners, strict=True)
      ]
    ),
    f"reference / JAX evaluate(distmat)       = {ref / jax_dm:5.1f}x  (target >= 5)",
    f"JAX evaluate_features / distance product = {jax_f / product:5.2f}x  (target <= 1.5)",
  ]
  return lines


def _child(argv_child: str, timeout: int = 3600) -> dict:
  env = dict(os.environ)
  proc = subprocess.run(
    [sys.executable, __file__, f"--child={argv_child}"],
    capture_output=True,
    text=True,
    env=env,
    timeout=timeout,
  )
  if proc.returncode:
    raise RuntimeError(f"child {argv_child} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _scaled(fraction: float) -> dict:
  return {
    "num_query": round(MARKET["num_query"] * fraction),
    "num_gallery": round(MARKET["num_gallery"] * fraction),
    "num_ids": max(10, round(MARKET["num_ids"] * fraction)),
    "num_cams": MARKET["num_cams"],
  }


def _blocks(data):
  from fsaf_jax.evaluation import distance

  pdist = lambda a, b: distance.pairwise_distance_chunked(a, b, "cosine")
  qf, gf = data["query_feats"], data["gallery_feats"]
  return pdist(qf, gf), pdist(qf, qf), pdist(gf, gf)


def _rerank_small(rounds: int, scale: dict) -> tuple[float, float, float, float]:
  """(JAX s, JAX symmetric s, reference s, max |JAX - reference|) at a reduced scale."""
  from fsaf_jax.evaluation import rerank
  from tests.reference import rerank_numpy

  q_g, q_q, g_g = _blocks(synthetic_features(**scale))
  results = {}

  def jax_call():
    results["jax"] = rerank.re_ranking(q_g, q_q, g_g)

  def jax_sym_call():
    results["jax_sym"] = rerank.re_ranking(q_g, q_q, g_g, symmetric=True)

  def ref_call():
    results["ref"] = rerank_numpy.re_ranking(q_g, q_q, g_g)

  runners = [
    Runner("rerank", "JAX re_ranking", jax_call, 1, None),
    Runner("rerank", "JAX re_ranking symmetric", jax_sym_call, 1, None),
    Runner("rerank", "NumPy reference", ref_call, 1, None),
  ]
  interleave(runners, rounds)
  diff = max(float(np.abs(results[k] - results["ref"]).max()) for k in ("jax", "jax_sym"))
  return runners[0].median, runners[1].median, runners[2].median, diff


def _rerank_full(rounds: int) -> tuple[float, float]:
  """Median JAX re-ranking times at Market scale from host (NumPy) distance blocks."""
  from fsaf_jax.evaluation import rerank

  q_g, q_q, g_g = _blocks(synthetic_features(**MARKET))
  runners = [
    Runner("rerank", "JAX", lambda: rerank.re_ranking(q_g, q_q, g_g), 1, None),
    Runner("rerank", "JAX sym", lambda: rerank.re_ranking(q_g, q_q, g_g, symmetric=True), 1, None),
  ]
  interleave(runners, rounds)
  return runners[0].median, runners[1].median


def rerank_section(rounds: int, fraction: float) -> list[str]:
  scale = _scaled(fraction)
  jax_small, sym_small, ref_small, diff = _rerank_small(rounds, scale)
  jax_full, sym_full = _rerank_full(rounds)
  child = _child("rerank_market")
  ref_mem = _child(f"rerank_ref:{fraction}")
  a_small = scale["num_query"] + scale["num_gallery"]
  growth = ((MARKET["num_query"] + MARKET["num_gallery"]) / a_small) ** 2
  ref_full_gib = ref_mem["before_gib"] + (ref_mem["peak_gib"] - ref_mem["before_gib"]) * growth
  small = f"{scale['num_query']:,} x {scale['num_gallery']:,} ({fraction:g} of Market)"
  full = f"{MARKET['num_query']:,} x {MARKET['num_gallery']:,} (Market)"
  return [
    "Re-ranking (k1 20, k2 6, lambda 0.3), cosine, from the q-g / q-q / g-g distance blocks "
    "(NumPy arrays); 'symmetric' = re_ranking(..., symmetric=True), as re_ranking_features:",
    *_fmt_table(
      [("scale", "JAX s", "JAX symmetric s", "NumPy reference s", "reference / JAX")]
      + [
        (
          small,
          f"{jax_small:.2f}",
          f"{sym_small:.2f}",
          f"{ref_small:.2f}",
          f"{ref_small / jax_small:.1f}x, symmetric {ref_small / sym_small:.1f}x (target >= 10)",
        ),
        (full, f"{jax_full:.2f}", f"{sym_full:.2f}", f"not run (~{ref_full_gib:.0f} GiB)", "-"),
      ]
    ),
    f"max |JAX - reference| at {fraction:g} scale: {diff:.1e}",
    "peak RSS, fresh process, re_ranking_features at Market scale (3 products + "
    f"re-ranking, {child['seconds']:.1f} s): {child['peak_gib']:.2f} GiB "
    f"(features alone: {child['before_gib']:.2f} GiB) (target < 4 GiB)",
    f"peak RSS, fresh process, NumPy reference at {fraction:g} scale: "
    f"{ref_mem['peak_gib']:.2f} GiB, {ref_mem['peak_gib'] - ref_mem['before_gib']:.2f} GiB above "
    f"its inputs; its dense [A, A] arrays grow as A^2 (x{growth:.0f}): ~{ref_full_gib:.0f} GiB "
    "at Market scale",
  ]


def msmt_section() -> list[str]:
  r = _child("msmt")
  return [
    f"MSMT17 scale, evaluate_features ({MSMT['num_query']:,} x {MSMT['num_gallery']:,}, "
    f"{DIM}-d, cosine, query_chunk 256), fresh process: {r['seconds']:.1f} s, "
    f"peak RSS {r['peak_gib']:.2f} GiB "
    f"(features alone {r['before_gib']:.2f} GiB; the full distance matrix alone would be "
    f"{MSMT['num_query'] * MSMT['num_gallery'] * 4 / 2**30:.1f} GiB) (target: fits in 8 GiB); "
    f"mAP {100 * r['mAP']:.1f}, {r['num_valid']} valid queries",
  ]


def run_child(kind: str) -> dict:
  if kind == "msmt":
    from fsaf_jax.evaluation import metrics

    data = synthetic_features(**MSMT, distractor_frac=0.0)
    before = _peak_rss_gib()
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      r = metrics.evaluate_features(data["query_feats"], data["gallery_feats"], *_ids(data))
    return {
      "seconds": time.perf_counter() - start,
      "peak_gib": _peak_rss_gib(),
      "before_gib": before,
      "mAP": r.mAP,
      "num_valid": r.num_valid,
    }
  if kind == "rerank_market":
    from fsaf_jax.evaluation import rerank

    data = synthetic_features(**MARKET)
    before = _peak_rss_gib()
    start = time.perf_counter()
    rerank.re_ranking_features(data["query_feats"], data["gallery_feats"], metric="cosine")
    return {
      "seconds": time.perf_counter() - start,
      "peak_gib": _peak_rss_gib(),
      "before_gib": before,
    }
  if kind.startswith("rerank_ref:"):
    from tests.reference import rerank_numpy

    q_g, q_q, g_g = _blocks(synthetic_features(**_scaled(float(kind.split(":")[1]))))
    before = _peak_rss_gib()
    rerank_numpy.re_ranking(q_g, q_q, g_g)
    return {"peak_gib": _peak_rss_gib(), "before_gib": before}
  raise ValueError(f"unknown --child={kind}")


def run(rounds: int = 2, skip=(), ref_fraction: float = 0.5) -> list[str]:
  """All sections; returns the printed lines (also used by benchmarks/run.py)."""
  lines = []
  if "metrics" not in skip:
    lines += metrics_section(rounds) + [""]
  if "rerank" not in skip:
    lines += rerank_section(rounds, ref_fraction) + [""]
  if "msmt" not in skip:
    lines += msmt_section()
  return lines


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(run_child(_CHILD.value)))
    return
  command = "python benchmarks/evaluation.py " + " ".join(sys.argv[1:])
  print("\n".join(machine_lines()))
  print(f"command: {command.strip()}")
  print(
    "NOTE: the machine may be shared with other jobs; absolute times are noisy, compare ratios."
  )
  print()
  for line in run(_ROUNDS.value, set(_SKIP.value), _REF_FRACTION.value):
    print(line, flush=True)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"\nload average (1/5/15 min) at end: {load}")


if __name__ == "__main__":
  app.run(main)
