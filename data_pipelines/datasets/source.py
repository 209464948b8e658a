"""Random access to the built ReID datasets, without TensorFlow.

    build("market1501", data_dir, manual_dir)          # once: prepares if not built
    source = load_source("market1501", "train", data_dir)
    len(source); source[i] -> {"image": b"\xff\xd8...", "person_id": 3,
                               "camera_id": 0, "file_name": "0002_c1s1_000451_03.jpg"}
    num_train_identities("market1501", data_dir) -> 751

`name` is a TFDS name with optional config, e.g. 'msmt17/v2' or 'cuhk03_np/labeled'.
Records keep the image **encoded** (JPEG, or PNG for CUHK03-NP): TFDS decoding is
skipped (`tfds.decode.SkipDecoding`); the input pipeline decodes with PIL.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

import data_pipelines.datasets  # noqa: F401  (registers the builders)
from data_pipelines.datasets import reid_builder

Record = dict[str, Any]


def _expand(path: str | os.PathLike[str]) -> str:
  return os.path.expanduser(os.fspath(path))


def get_builder(
  name: str, data_dir: str | os.PathLike[str], **builder_kwargs
) -> tfds.core.DatasetBuilder:
  """The TFDS builder `name` ('market1501', 'msmt17/v2', ...) over `data_dir`."""
  return tfds.builder(name, data_dir=_expand(data_dir), **builder_kwargs)


def _prepared_builder(name: str, data_dir: str | os.PathLike[str]) -> tfds.core.DatasetBuilder:
  builder = get_builder(name, data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"Dataset {name!r} is not built in data_dir {_expand(data_dir)} (looked for "
      f"{builder.data_path}). Build it with: python -m data_pipelines.datasets.build "
      f"--dataset={name} --manual_dir=DIR --data_dir={data_dir}"
    )
  return builder


def build(
  name: str,
  data_dir: str | os.PathLike[str],
  manual_dir: str | os.PathLike[str] | None = None,
  *,
  skip_corrupt: bool = False,
) -> tfds.core.DatasetBuilder:
  """Builds dataset `name` into `data_dir` from `manual_dir` unless already built.

  Args:
    name: TFDS name, optionally with config ('msmt17/v1').
    data_dir: where the ArrayRecord files go.
    manual_dir: folder holding the download (extracted folder or zip archive); None:
      TFDS's default `<data_dir>/downloads/manual`.
    skip_corrupt: leave out undecodable images (counted in the metadata) instead of
      failing.

  Returns:
    The prepared builder.
  """
  builder = get_builder(name, data_dir, skip_corrupt=skip_corrupt)
  if manual_dir is not None:
    manual_dir = _expand(manual_dir)
    if os.path.isfile(manual_dir):
      raise NotADirectoryError(
        f"manual_dir {manual_dir} is a file: pass the folder that holds the archive or "
        f"the extracted dataset.\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


@dataclasses.dataclass
class ReidSource(Sequence):
  """Random-access source of one split: records with the image still encoded.

  Wraps the TFDS ArrayRecord data source; picklable (for grain worker processes).
  """

  tfds_source: Any  # tfds.core.data_sources.ArrayRecordDataSource

  def __len__(self) -> int:
    return len(self.tfds_source)

  def __getitem__(self, index: int) -> Record:  # type: ignore[override]
    if isinstance(index, slice):
      raise TypeError("ReidSource does not support slicing; index with ints.")
    return _to_record(self.tfds_source[index])

  def __getitems__(self, indices: Iterable[int]) -> list[Record]:
    return [_to_record(r) for r in self.tfds_source.__getitems__(list(indices))]

  def __iter__(self) -> Iterator[Record]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"ReidSource({self.tfds_source!r}, len={len(self)})"


def _to_record(example: dict[str, Any]) -> Record:
  file_name = example["file_name"]
  return {
    "image": bytes(example["image"]),
    "person_id": int(example["person_id"]),
    "camera_id": int(example["camera_id"]),
    "file_name": file_name.decode("utf-8") if isinstance(file_name, bytes) else str(file_name),
  }


def load_source(name: str, split: str, data_dir: str | os.PathLike[str]) -> ReidSource:
  """Random-access source of `split` ('train' | 'query' | 'gallery') of built `name`.

  Raises:
    FileNotFoundError: the dataset is not built in `data_dir` (says how to build it).
    ValueError: unknown split.
  """
  if split not in reid_builder.SPLITS:
    raise ValueError(
      f"Unknown split {split!r} for {name!r}: expected one of {reid_builder.SPLITS}."
    )
  builder = _prepared_builder(name, data_dir)
  tfds_source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  return ReidSource(tfds_source)


def num_train_identities(name: str, data_dir: str | os.PathLike[str]) -> int:
  """Number of train identities (labels are 0..N-1) of built `name`."""
  return int(_prepared_builder(name, data_dir).info.metadata["num_train_identities"])


def metadata(name: str, data_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """The build metadata of `name` (see `reid_builder`): id mapping, per-split stats."""
  return dict(_prepared_builder(name, data_dir).info.metadata.items())
