"""The records both input pipelines read from a random-access source.

A source has `__len__` and `__getitem__` (e.g.
`data_pipelines.datasets.source.load_source(...)`); record `i` is a dict
`{'image': encoded JPEG/PNG bytes, 'person_id': int, 'camera_id': int, 'file_name': str}`
(`file_name` optional; TFDS sources give it as bytes).
"""

from collections.abc import Mapping
from typing import Any


def file_name(record: Mapping[str, Any]) -> str:
  """The record's `file_name` as str ('' when it has none)."""
  name = record.get("file_name", "")
  return name.decode() if isinstance(name, bytes) else str(name)
