r"""Builds a ReID dataset into TFDS ArrayRecord files and prints its per-split counts.

  python -m data_pipelines.datasets.build --dataset=market1501 \
      --manual_dir=~/datasets --data_dir=~/tensorflow_datasets

`--dataset` takes a config where the dataset has them: `msmt17/v1`, `msmt17/v2`,
`cuhk03_np/detected`, `cuhk03_np/labeled`. An already built dataset is not rebuilt
when `--manual_dir` holds the same files (paths and sizes) or no copy of it; when it
holds another copy the build is refused, naming both, unless `--overwrite` (which
deletes the built version and builds it again). Counts that differ from the published
ones are reported as a warning, not an error (e.g. the synthetic Market-layout data).
User mistakes (missing download, bad file names, corrupt images without
`--skip_corrupt`, unknown dataset) end with one `ERROR:` line, exit status 2; a full
disk ends with one `ERROR:` line (the partial build removed), exit status 1. Two builds
into one data_dir at once are safe: the second waits for the first and uses its build;
the partial folders of a build that was killed are removed by the next one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from absl import flags

from data_pipelines import errors, logs, paths
from data_pipelines.datasets import reid_builder, source


def format_report(
  title: str,
  stats: Mapping[str, Mapping[str, Any]],
  published: Mapping[str, tuple[int | None, int]] | None,
) -> tuple[str, list[str]]:
  """Per-split table and the list of differences from the published figures.

  Args:
    title: dataset name for the header.
    stats: metadata['splits'] of the build: {split: {num_ids, num_images, ...}}.
    published: {split: (ids or None, images)}, or None for an unknown dataset.

  Returns:
    (table text, warning lines).
  """
  header = f"{'split':<8} {'ids':>6} {'images':>8} {'junk':>6} {'distr.':>6} {'corrupt':>7}"
  if published:
    header += f" {'pub. ids':>8} {'pub. images':>11}"
  lines = [title, header]
  warnings = []
  for split in reid_builder.SPLITS:
    s = stats[split]
    row = (
      f"{split:<8} {s['num_ids']:>6} {s['num_images']:>8} {s['num_junk_dropped']:>6} "
      f"{s['num_distractors_dropped']:>6} {len(s['skipped_corrupt']):>7}"
    )
    if published:
      pub_ids, pub_images = published[split]
      row += f" {pub_ids if pub_ids is not None else '-':>8} {pub_images:>11}"
      if (pub_ids is not None and pub_ids != s["num_ids"]) or pub_images != s["num_images"]:
        warnings.append(
          f"WARNING: {title} {split}: built {s['num_ids']} ids / {s['num_images']} images, "
          f"published {pub_ids} ids / {pub_images} images."
        )
    lines.append(row)
    if s["skipped_corrupt"]:
      warnings.append(
        f"WARNING: {title} {split}: skipped {len(s['skipped_corrupt'])} corrupt images: "
        f"{s['skipped_corrupt']}"
      )
  return "\n".join(lines), warnings


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: every input is a --flag")
  errors.check_output_dir(_DATA_DIR.value, "--data_dir")
  start = time.perf_counter()
  try:
    builder = source.build(
      _DATASET.value,
      _DATA_DIR.value,
      _MANUAL_DIR.value,
      skip_corrupt=_SKIP_CORRUPT.value,
      overwrite=_OVERWRITE.value,
    )
  except source.DatasetWriteError as e:  # disk full: one line, exit 1
    sys.exit(f"ERROR: {errors.one_line(str(e))}")
  elapsed = time.perf_counter() - start
  metadata = builder.info.metadata
  published = getattr(builder, "PUBLISHED_STATS", {}).get(
    builder.builder_config.name if builder.builder_config else None
  )
  table, warnings = format_report(_DATASET.value, metadata["splits"], published)
  print(f"{_DATASET.value}: {builder.data_path} (from {metadata['source']}), {elapsed:.1f} s")
  print(table)
  for w in warnings:
    print(w)


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _DATASET = flags.DEFINE_string("dataset", "market1501", "TFDS name[/config] of the dataset.")
  _MANUAL_DIR = paths.DEFINE_path(
    "manual_dir",
    None,
    "Folder holding the download (extracted folder or zip). Default: <data_dir>/downloads/manual.",
  )
  _DATA_DIR = paths.DEFINE_path("data_dir", "~/tensorflow_datasets", "Where TFDS writes.")
  _SKIP_CORRUPT = flags.DEFINE_bool(
    "skip_corrupt", False, "Leave out (and count) images that do not decode instead of failing."
  )
  _OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Rebuild a dataset already built in --data_dir from another source (other files or sizes).",
  )
  errors.run(main)
