r"""Evaluation (metrics, re-ranking) timed beside the implementations users run.

  python benchmarks/setup_peers.py       # once: fast-reid 1.4.0 (--no-deps) + its Cython
  python benchmarks/evaluation.py        # tens of minutes on a 2-core CPU; a large peak (the peer)
  python benchmarks/evaluation.py --skip=rerank_full,msmt     # the quick sections only
  python benchmarks/evaluation.py --skip=metrics,rerank,msmt --sharded=50000,1000000,256,64
  python benchmarks/evaluation.py --skip=metrics,rerank,msmt --sharded_rerank=1684,7956,2048

The peers are fast-reid's (PyPI `fastreid==1.4.0`, see `benchmarks/peers.py`): its
Cython `evaluate_rank` (`rank_cy.evaluate_cy`) for the metrics and its NumPy
`re_ranking` for k-reciprocal re-ranking. Without them (no `setup_peers.py` run, or
no C compiler) the in-repo NumPy references (`tests/reference/reid_metrics_numpy.py`,
`tests/reference/rerank_numpy.py`) stand in, and the tables say so.

Prints, under a header naming the machine (CPU, cores, load, versions, XLA_FLAGS) and
the peer that ran:

* Metrics at Market-1501 scale (3,368 queries x 15,913 gallery, 2,048-d): the
  query-gallery product alone (`distance.pairwise_distance`), the peer from the
  distance matrix, `metrics.evaluate` from the same (NumPy) distance matrix and
  `metrics.evaluate_features` from the features (product included). Targets:
  peer / evaluate >= 5; evaluate_features / product <= 1.5. The JAX results are
  checked against the in-repo reference (stable tie order, exact) and against the peer.
* k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3, cosine distances, fast-reid's
  squared-input convention on both sides, `squared=True`) at `--rerank_ref_fraction`
  (default half) and full Market scale: the peer from NumPy q-g / q-q / g-g blocks,
  `rerank.re_ranking` from the same blocks (`symmetric=True`) and
  `rerank.re_ranking_features` from the features (its three products included).
  Target: peer / JAX >= 10, in under 4 GiB: the peak RSS of `re_ranking_features` in
  a fresh process at each scale, and of the peer at the reduced scale, is measured too.
* The peak RSS (fresh process) and time of `evaluate_features` at MSMT17 scale
  (11,659 x 82,161, 2,048-d; target: under 8 GiB).
* With `--sharded=Q,G,D`: `metrics.evaluate_features_sharded` with the gallery split
  over 4 simulated CPU devices, in a fresh process: time, peak RSS, and the per-device
  share of the gallery and of a query chunk's distances.
* With `--sharded_rerank=Q,G,D`: `rerank_sharded.re_ranking_features_sharded` with the
  images split over 4 simulated CPU devices, beside `rerank.re_ranking_features` on one
  device, in a fresh process: times, the largest difference of their results, peak RSS,
  and XLA's per-device memory (arguments + temporaries) of the neighbour-search kernel
  compiled for 1 and for 4 devices.

Inputs (`synthetic_features`): identity centres plus heavy-tailed per-image noise (a
realistic spread of easy and hard queries), 18% distractors (pid 0) in the gallery,
2% of queries whose identity has no gallery image (skipped by the protocol), 6
cameras, and 2% of gallery images exact duplicates of others (exactly tied distances).

Every timing is the median over `--rounds` rounds after a warm-up call (compilation
excluded; the NumPy peer at full scale skips the warm-up), the runners of one table
interleaved round by round (`harness.interleave`) so that load changes hit them alike;
absolute figures on a shared machine are noisy, the ratios less so. As in `eval.py`,
`fsaf_jax.core.host_allocator.configure()` runs first (glibc keeps freed memory mapped, so
XLA's large per-call buffers are not page-faulted in afresh every call; NumPy gets the
same settings); `--nohost_allocator` measures without.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks import peers  # noqa: E402
from benchmarks.harness import Runner, interleave, machine_lines  # noqa: E402
from fsaf_jax.core import (
  cli,  # noqa: E402
  host_allocator,  # noqa: E402
)

MARKET = {"num_query": 3368, "num_gallery": 15913, "num_ids": 750, "num_cams": 6}
MSMT = {"num_query": 11659, "num_gallery": 82161, "num_ids": 3060, "num_cams": 15}
DIM = 2048

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed rounds per runner (after a warm-up).")
_SKIP = flags.DEFINE_list(
  "skip", [], "Sections to skip: metrics, rerank (both scales), rerank_full, msmt."
)
_REF_FRACTION = flags.DEFINE_float(
  "rerank_ref_fraction", 0.5, "The reduced re-ranking scale (fraction of Market's sets)."
)
_SHARDED = flags.DEFINE_string(
  "sharded",
  None,
  "Also run evaluate_features_sharded on 4 simulated devices at QUERIES,GALLERY,DIM"
  "[,QUERY_CHUNK] (e.g. 50000,1000000,256,64; opt-in: minutes on a CPU).",
)
_SHARDED_RERANK = flags.DEFINE_string(
  "sharded_rerank",
  None,
  "Also run re_ranking_features_sharded on 4 simulated devices at QUERIES,GALLERY,DIM "
  "(e.g. 1684,7956,2048, half Market; opt-in).",
)
_HOST_ALLOCATOR = flags.DEFINE_bool(
  "host_allocator",
  True,
  "Apply fsaf_jax.core.host_allocator (malloc settings), as eval.py does.",
  allow_override=True,  # benchmarks/run.py, which imports this module, defines it too
)
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process.")


def synthetic_features(
  num_query: int,
  num_gallery: int,
  num_ids: int,
  num_cams: int,
  dim: int = DIM,
  distractor_frac: float = 0.18,
  no_positive_frac: float = 0.02,
  duplicate_frac: float = 0.02,
  noise: float = 3.0,
  seed: int = 0,
) -> dict[str, np.ndarray]:
  """Random features with identity structure: id centre + heavy-tailed per-image noise.

  Each image gets `centre[pid] + s * N(0, I)` with s log-normal around `noise`, so a
  few images are hard (Rank-1 ~96%, mAP ~73% at Market scale with cosine).
  Distractors (pid 0) are pure noise; `no_positive_frac` of the queries carry an
  identity absent from the gallery; `duplicate_frac` of the gallery images are exact
  copies (feature and pid, another camera draw) of other gallery images, which ties
  their distances exactly. float32 features [n, dim], int64 ids.
  """
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
  n_distract = int(num_gallery * distractor_frac)
  g_pids = np.concatenate(
    [rng.integers(1, num_ids + 1, num_gallery - n_distract), np.zeros(n_distract, np.int64)]
  )
  q_pids = rng.integers(1, num_ids + 1, num_query)
  lonely = rng.random(num_query) < no_positive_frac
  q_pids[lonely] = num_ids + 1 + np.arange(int(lonely.sum()))  # no gallery image

  def feats(pids):
    out = np.empty((pids.shape[0], dim), np.float32)
    for s in range(0, pids.shape[0], 8192):
      p = pids[s : s + 8192]
      scale = (noise * np.exp(0.35 * rng.standard_normal(p.shape[0]))).astype(np.float32)
      f = rng.standard_normal((p.shape[0], dim), dtype=np.float32) * scale[:, None]
      known = (p > 0) & (p <= num_ids)
      f[known] += centres[p[known]]
      f[~known] *= np.float32(np.sqrt(1 + 1 / noise**2))
      out[s : s + 8192] = f
    return out

  g_feats = feats(g_pids)
  n_dup = int(num_gallery * duplicate_frac)
  dst = rng.choice(num_gallery, n_dup, replace=False)
  src = rng.choice(np.setdiff1d(np.arange(num_gallery), dst), n_dup, replace=False)
  g_feats[dst], g_pids[dst] = g_feats[src], g_pids[src]
  return {
    "query_feats": feats(q_pids),
    "gallery_feats": g_feats,
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


def _quiet(results: dict, name: str, fn):
  def call():
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      results[name] = fn()

  return call


def _peer_note(found: peers.FastReid) -> str:
  return f"peer: {found.describe()}"


def metrics_section(rounds: int, found: peers.FastReid) -> list[str]:
  import jax
  import jax.numpy as jnp

  from fsaf_jax.evaluation import distance, metrics
  from tests.reference import reid_metrics_numpy

  data = synthetic_features(**MARKET)
  ids = _ids(data)
  qf, gf = jnp.asarray(data["query_feats"]), jnp.asarray(data["gallery_feats"])
  distmat = np.array(distance.pairwise_distance(qf, gf, "cosine"))  # writable NumPy
  results = {}
  if found.evaluate_rank_cython is not None:
    peer_name = "fast-reid Cython evaluate_rank(distmat)"
    peer = lambda: found.evaluate_rank_cython(distmat, *ids, 50)
  else:
    peer_name = "in-repo NumPy reference(distmat) [fast-reid missing]"
    peer = lambda: reid_metrics_numpy.eval_market1501(distmat, *ids, max_rank=50)
  runners = [
    Runner(
      "metrics",
      "q x g product alone (pairwise_distance)",
      _quiet(results, "product", lambda: jax.block_until_ready(distance.pairwise_distance(qf, gf))),
      1,
      None,
    ),
    Runner("metrics", peer_name, _quiet(results, "peer", peer), 1, None),
    Runner(
      "metrics",
      "JAX evaluate(distmat)",
      _quiet(results, "jax", lambda: metrics.evaluate(distmat, *ids, max_rank=50)),
      1,
      None,
    ),
    Runner(
      "metrics",
      "JAX evaluate_features (product included)",
      _quiet(results, "jax_feats", lambda: metrics.evaluate_features(qf, gf, *ids, max_rank=50)),
      1,
      None,
    ),
  ]
  interleave(runners, rounds)
  ref_cmc, ref_map, ref_minp, _, _ = reid_metrics_numpy.eval_market1501(distmat, *ids, max_rank=50)
  diff_ref = max(
    max(np.abs(r.cmc - ref_cmc).max(), abs(r.mAP - ref_map), abs(r.mINP - ref_minp))
    for r in (results["jax"], results["jax_feats"])
  )
  r = results["jax"]
  if found.evaluate_rank_cython is not None:
    cmc, ap, inp = results["peer"]
    peer_diff = max(
      float(np.abs(cmc - r.cmc).max()), abs(float(np.mean(ap)) - r.mAP), abs(np.mean(inp) - r.mINP)
    )
    peer_line = (
      f"max |JAX - fast-reid| (CMC, mAP, mINP) = {peer_diff:.1e} (fast-reid's argsort is not "
      "stable: exactly tied distances may be ordered differently)"
    )
  else:
    peer_line = "(the in-repo reference is also the correctness check)"
  t = {rr.name: rr for rr in runners}
  product, peer_s, jax_dm, jax_f = (rr.median for rr in runners)
  return [
    f"Metrics, Market-1501 scale: {ids[0].shape[0]:,} x {ids[1].shape[0]:,}, {DIM}-d, cosine "
    f"(Rank-1 {100 * r.cmc[0]:.1f}, mAP {100 * r.mAP:.1f}, mINP {100 * r.mINP:.1f}, "
    f"{r.num_valid} valid queries, {r.num_skipped} without a positive)",
    *_fmt_table(
      [("runner", "median s", "all rounds s")]
      + [
        (name, f"{rr.median:.2f}", " ".join(f"{x:.2f}" for x in rr.times)) for name, rr in t.items()
      ]
    ),
    f"peer / JAX evaluate(distmat)                  = {peer_s / jax_dm:5.1f}x  (target >= 5)",
    f"JAX evaluate_features / q x g product alone   = {jax_f / product:5.2f}x  (target <= 1.5)",
    f"max |JAX - in-repo reference| (CMC, mAP, mINP) = {diff_ref:.1e}",
    peer_line,
  ]


def _child(argv_child: str, timeout: int = 7200, devices: int | None = None) -> dict:
  allocator = "--host_allocator" if flags.FLAGS.host_allocator else "--nohost_allocator"
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = (
      f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    ).strip()
  proc = subprocess.run(
    [sys.executable, __file__, f"--child={argv_child}", allocator],
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
  from benchmarks import chunked_distance

  pdist = lambda a, b: chunked_distance.pairwise_distance_chunked(a, b, "cosine")
  qf, gf = data["query_feats"], data["gallery_feats"]
  return pdist(qf, gf), pdist(qf, qf), pdist(gf, gf)


def _rerank_scale(rounds: int, fraction: float, found: peers.FastReid, check: bool) -> dict:
  """Times the peer and the JAX entry points at `fraction` of Market's scale.

  With `check`, the JAX result is also compared with the in-repo reference given the
  squared blocks (one more untimed NumPy run).
  """
  import jax
  import jax.numpy as jnp

  from fsaf_jax.evaluation import distance, rerank
  from tests.reference import rerank_numpy

  data = synthetic_features(**_scaled(fraction))
  qf, gf = data["query_feats"], data["gallery_feats"]
  q_g, q_q, g_g = _blocks(data)
  results = {}
  if found.re_ranking is not None:
    peer_name = "fast-reid re_ranking (squares its input)"
    peer = lambda: found.re_ranking(q_g, q_q, g_g)
  else:
    peer_name = "in-repo NumPy reference on squared blocks [fast-reid missing]"
    peer = lambda: rerank_numpy.re_ranking(np.square(q_g), np.square(q_q), np.square(g_g))
  blocks = lambda: rerank.re_ranking(q_g, q_q, g_g, squared=True, symmetric=True)
  feats = lambda: rerank.re_ranking_features(qf, gf, squared=True)
  qf_dev, gf_dev = jnp.asarray(qf), jnp.asarray(gf)
  products = lambda: jax.block_until_ready(
    [
      distance.pairwise_distance(a, b)
      for a, b in ((qf_dev, gf_dev), (qf_dev, qf_dev), (gf_dev, gf_dev))
    ]
  )
  runners = [
    Runner("rerank", peer_name, _quiet(results, "peer", peer), 1, None, warm_up=fraction < 1),
    Runner(
      "rerank", "JAX re_ranking(blocks, symmetric=True)", _quiet(results, "blocks", blocks), 1, None
    ),
    Runner(
      "rerank",
      "JAX re_ranking_features (products included)",
      _quiet(results, "feats", feats),
      1,
      None,
    ),
    Runner(
      "rerank", "  of which: the 3 products alone", _quiet(results, "products", products), 1, None
    ),
  ]
  interleave(runners, rounds)
  out = {
    "runners": runners,
    "diff": max(float(np.abs(results[k] - results["peer"]).max()) for k in ("blocks", "feats")),
    "label": (
      f"{data['query_pids'].shape[0]:,} x {data['gallery_pids'].shape[0]:,} "
      f"({fraction:g} of Market)"
    ),
  }
  if check:
    want = rerank_numpy.re_ranking(np.square(q_g), np.square(q_q), np.square(g_g))
    out["ref_diff"] = max(float(np.abs(results[k] - want).max()) for k in ("blocks", "feats"))
  return out


def rerank_section(rounds: int, fractions) -> list[str]:
  lines = [
    "Re-ranking (k1 20, k2 6, lambda 0.3), cosine distances, squared-input convention "
    "(fast-reid's; JAX squared=True) on both sides; the peer and JAX re_ranking take the same "
    "NumPy q-g / q-q / g-g blocks, re_ranking_features the features:"
  ]
  rows = [("scale", "runner", "median s", "all rounds s", "peer / runner")]
  checks = []
  for fraction in fractions:
    # A fresh process per scale: the peer's dense arrays (large at full scale) are
    # given back when it exits (with the host allocator, this process would keep them).
    out = _child(f"rerank_scale:{fraction}:{rounds}:{int(fraction == fractions[0])}")
    medians = [statistics.median(t) for t in out["times"]]
    for k, (name, times) in enumerate(zip(out["names"], out["times"], strict=True)):
      rows.append(
        (
          out["label"] if k == 0 else "",
          name,
          f"{medians[k]:.2f}",
          " ".join(f"{x:.2f}" for x in times),
          "-" if k in (0, 3) else f"{medians[0] / medians[k]:.1f}x",
        )
      )
    checks.append(f"{fraction:g}: max |JAX - peer| = {out['diff']:.1e}")
    if "ref_diff" in out:
      checks[-1] += f", max |JAX - in-repo reference on squared blocks| = {out['ref_diff']:.1e}"
  lines += _fmt_table(rows)
  lines.append("target: peer / JAX >= 10 at both scales")
  lines += checks
  lines.append(
    "(fast-reid's argsort is not stable: the duplicated gallery images tie exactly, and "
    "their neighbours may be taken in another order, which moves some re-ranked distances)"
  )
  for fraction in fractions:
    child = _child(f"rerank_jax:{fraction}")
    lines.append(
      f"peak RSS, fresh process, JAX re_ranking_features at {fraction:g} of Market (features, "
      f"3 products, re-ranking, first call: {child['seconds']:.1f} s): {child['peak_gib']:.2f} GiB "
      f"(features alone: {child['before_gib']:.2f} GiB) (target < 4 GiB)"
    )
  peer = _child(f"rerank_peer:{fractions[0]}")
  lines.append(
    f"peak RSS, fresh process, the peer at {fractions[0]:g} of Market (from the NumPy "
    f"blocks; {peer['seconds']:.1f} s): {peer['peak_gib']:.2f} GiB (blocks alone: "
    f"{peer['before_gib']:.2f} GiB)"
  )
  return lines


def msmt_section() -> list[str]:
  r = _child("msmt")
  return [
    f"MSMT17 scale, evaluate_features ({MSMT['num_query']:,} x {MSMT['num_gallery']:,}, "
    f"{DIM}-d, cosine, query_chunk 256), fresh process: {r['seconds']:.1f} s, "
    f"peak RSS {r['peak_gib']:.2f} GiB "
    f"(features alone {r['before_gib']:.2f} GiB; the full distance matrix alone would be "
    f"{MSMT['num_query'] * MSMT['num_gallery'] * 4 / 2**30:.1f} GiB) (target < 8 GiB); "
    f"mAP {100 * r['mAP']:.1f}, {r['num_valid']} valid queries",
  ]


def metrics_lib_default_chunk() -> int:
  from fsaf_jax.evaluation import metrics

  return metrics.DEFAULT_QUERY_CHUNK


def sharded_section(spec: str) -> list[str]:
  nq, ng, dim, chunk = ([int(x) for x in spec.split(",")] + [metrics_lib_default_chunk()])[:4]
  r = _child(f"sharded:{nq},{ng},{dim},{chunk}", devices=4)
  return [
    f"Sharded metrics, evaluate_features_sharded: {nq:,} x {ng:,}, {dim}-d, cosine, gallery "
    f"split over {r['devices']} simulated CPU devices (one process, XLA_FLAGS="
    f"--xla_force_host_platform_device_count=4), query_chunk {chunk}, fresh process: "
    f"{r['seconds']:.1f} s, peak RSS {r['peak_gib']:.2f} GiB (features alone "
    f"{r['before_gib']:.2f} GiB); per device: gallery shard {r['shard_gib']:.2f} GiB, a "
    f"chunk's distances {r['chunk_gib']:.3f} GiB; mAP {100 * r['mAP']:.1f}, "
    f"{r['num_valid']:,} valid queries",
  ]


def sharded_rerank_section(spec: str) -> list[str]:
  nq, ng, dim = (int(x) for x in spec.split(","))
  r = _child(f"sharded_rerank:{nq},{ng},{dim}", devices=4)
  mib = lambda b: b / 2**20
  return [
    f"Sharded re-ranking, re_ranking_features_sharded: {nq:,} x {ng:,}, {dim}-d, cosine, "
    f"images split over {r['devices']} simulated CPU devices (one process), first calls "
    "(compilation included): "
    f"{r['sharded_s']:.1f} s (one device, re_ranking_features: {r['single_s']:.1f} s), "
    f"max |difference| {r['max_diff']:.1e}, peak RSS {r['peak_gib']:.2f} GiB",
    f"  neighbour-search kernel per device (XLA memory analysis, {r['row_chunk']} rows "
    f"per call): 1 device {mib(r['one_args']):.1f} MiB arguments + "
    f"{mib(r['one_temp']):.1f} MiB temporaries; 4 devices {mib(r['four_args']):.1f} + "
    f"{mib(r['four_temp']):.1f} MiB",
  ]


def _rank_kernel_memory(mesh, num_all: int, dim: int, rows: int):
  import jax
  import jax.numpy as jnp

  from fsaf_jax.evaluation import rerank_sharded

  images = rerank_sharded._ShardedImages(mesh, "data", "cosine", True)
  split = jax.ShapeDtypeStruct((num_all + (-num_all % mesh.size), dim), jnp.float32)
  args = (
    jax.ShapeDtypeStruct((rows, dim), jnp.float32, sharding=images.rep),
    jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=images.rep),
    jax.ShapeDtypeStruct(split.shape, jnp.float32, sharding=images.split),
    jax.ShapeDtypeStruct(split.shape[:1], jnp.float32, sharding=images.split),
  )
  return images.rank_block(21, num_all).lower(*args).compile().memory_analysis()


def run_child(kind: str) -> dict:
  if kind.startswith("sharded_rerank:"):
    import jax
    from jax.sharding import Mesh

    from fsaf_jax.evaluation import rerank, rerank_sharded

    nq, ng, dim = (int(x) for x in kind.split(":")[1].split(","))
    data = synthetic_features(nq, ng, max(10, ng // 20), 6, dim=dim)
    qf, gf = data["query_feats"], data["gallery_feats"]
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    start = time.perf_counter()
    single = rerank.re_ranking_features(qf, gf, squared=True)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    sharded = rerank_sharded.re_ranking_features_sharded(qf, gf, mesh, squared=True)
    sharded_s = time.perf_counter() - start
    row_chunk = rerank.DEFAULT_ROW_CHUNK
    one = _rank_kernel_memory(
      Mesh(np.asarray(jax.devices()[:1]), ("data",)), nq + ng, dim, row_chunk
    )
    four = _rank_kernel_memory(mesh, nq + ng, dim, row_chunk)
    return {
      "devices": mesh.size,
      "single_s": single_s,
      "sharded_s": sharded_s,
      "max_diff": float(np.abs(single - sharded).max()),
      "peak_gib": _peak_rss_gib(),
      "row_chunk": row_chunk,
      "one_args": one.argument_size_in_bytes,
      "one_temp": one.temp_size_in_bytes,
      "four_args": four.argument_size_in_bytes,
      "four_temp": four.temp_size_in_bytes,
    }
  if kind.startswith("sharded:"):
    import jax
    from jax.sharding import Mesh

    from fsaf_jax.evaluation import metrics

    nq, ng, dim, chunk = (int(x) for x in kind.split(":")[1].split(","))
    data = synthetic_features(nq, ng, max(10, ng // 20), 15, dim=dim, duplicate_frac=0.0)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    before = _peak_rss_gib()
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      r = metrics.evaluate_features_sharded(
        data["query_feats"], data["gallery_feats"], *_ids(data), mesh, query_chunk=chunk
      )
    per_device = -(-ng // mesh.size)
    return {
      "seconds": time.perf_counter() - start,
      "peak_gib": _peak_rss_gib(),
      "before_gib": before,
      "devices": mesh.size,
      "shard_gib": per_device * dim * 4 / 2**30,
      "chunk_gib": chunk * per_device * 4 / 2**30,
      "mAP": r.mAP,
      "num_valid": r.num_valid,
    }
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
  if kind.startswith("rerank_scale:"):
    _, fraction, rounds, check = kind.split(":")
    out = _rerank_scale(int(rounds), float(fraction), peers.load_fastreid(), bool(int(check)))
    runners = out.pop("runners")
    return dict(out, names=[r.name for r in runners], times=[r.times for r in runners])
  if kind.startswith("rerank_jax:"):
    from fsaf_jax.evaluation import rerank

    data = synthetic_features(**_scaled(float(kind.split(":")[1])))
    qf, gf = data["query_feats"], data["gallery_feats"]
    del data
    before = _peak_rss_gib()
    start = time.perf_counter()
    rerank.re_ranking_features(qf, gf, squared=True)
    return {
      "seconds": time.perf_counter() - start,
      "peak_gib": _peak_rss_gib(),
      "before_gib": before,
    }
  if kind.startswith("rerank_peer:"):
    from tests.reference import rerank_numpy

    found = peers.load_fastreid()
    q_g, q_q, g_g = _blocks(synthetic_features(**_scaled(float(kind.split(":")[1]))))
    before = _peak_rss_gib()
    start = time.perf_counter()
    if found.re_ranking is not None:
      found.re_ranking(q_g, q_q, g_g)
    else:
      rerank_numpy.re_ranking(np.square(q_g), np.square(q_q), np.square(g_g))
    return {
      "seconds": time.perf_counter() - start,
      "peak_gib": _peak_rss_gib(),
      "before_gib": before,
    }
  raise ValueError(f"unknown --child={kind}")


def run(
  rounds: int = 2,
  skip=(),
  ref_fraction: float = 0.5,
  sharded: str | None = None,
  sharded_rerank: str | None = None,
  emit: Callable[[list[str]], None] | None = None,
) -> list[str]:
  """All sections; returns the lines (also used by benchmarks/run.py), and passes each
  section's lines to `emit` as soon as it is done."""
  found = peers.load_fastreid()
  lines = []

  def add(section: list[str]) -> None:
    lines.extend(section)
    if emit:
      emit(section)

  add([_peer_note(found), ""])
  if "metrics" not in skip:
    add(metrics_section(rounds, found) + [""])
    _release_memory()
  if "rerank" not in skip:
    fractions = [ref_fraction] + ([] if "rerank_full" in skip or ref_fraction >= 1 else [1.0])
    add(rerank_section(rounds, fractions) + [""])
  if "msmt" not in skip:
    add(msmt_section() + [""])
  if sharded:
    add(sharded_section(sharded))
  if sharded_rerank:
    add(sharded_rerank_section(sharded_rerank))
  return lines


def _release_memory() -> None:
  """Gives freed heap memory back to the OS (the host allocator never trims by itself)."""
  gc.collect()
  try:
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def main(argv):
  del argv
  allocator = host_allocator.configure() if flags.FLAGS.host_allocator else False
  if _CHILD.value:
    print(json.dumps(run_child(_CHILD.value)))
    return
  command = "python benchmarks/evaluation.py " + " ".join(sys.argv[1:])
  print("\n".join(machine_lines()))
  print(f"command: {command.strip()}")
  print(f"C allocator: {host_allocator.DESCRIPTION if allocator else 'glibc defaults'}")
  print(
    "NOTE: the machine may be shared with other jobs; absolute times are noisy, compare ratios."
  )
  print()
  run(
    _ROUNDS.value,
    set(_SKIP.value),
    _REF_FRACTION.value,
    _SHARDED.value,
    _SHARDED_RERANK.value,
    emit=lambda section: print("\n".join(section), flush=True),
  )
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"\nload average (1/5/15 min) at end: {load}")


if __name__ == "__main__":
  cli.show_only_ours()  # third-party log lines only with --verbosity=1
  app.run(main)
