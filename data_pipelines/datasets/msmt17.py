"""MSMT17 (V1 and V2) as a TFDS builder (`msmt17/v1`, `msmt17/v2`), from manual_dir.

Layout as distributed: `MSMT17_V1/{train,test}/` (V2: `MSMT17_V2/{mask_train_v2,
mask_test_v2}/`, faces blurred) with one sub-folder per identity, plus list files
`list_{train,val,query,gallery}.txt` at the top whose lines are `relpath pid`, the path
relative to the train (train, val) or test (query, gallery) folder, e.g.
`0000/0000_000_01_0303morning_0015_0.jpg 0`. The camera comes from the file name.

As customary (torchreid, fast-reid, the MSMT17 paper's 32,621 training images), the
train split is list_train + list_val.
"""

import dataclasses

import tensorflow_datasets as tfds

from data_pipelines.datasets import manual_files, naming, reid_builder
from fsaf_jax.core import errors

_INSTRUCTIONS = """\
MSMT17 (Wei et al., CVPR 2018) is distributed on request: sign the release agreement at
http://www.pkuvmc.com/dataset.html and download `MSMT17_V1` or `MSMT17_V2` (V2 has
the faces blurred; V1 is no longer distributed). Extract the `.tar.gz` (only .zip
archives are read directly) and put the folder `MSMT17_V1/` (holding `train/`, `test/`,
`list_train.txt`, `list_val.txt`, `list_query.txt`, `list_gallery.txt`) or
`MSMT17_V2/` (holding `mask_train_v2/`, `mask_test_v2/` and the same lists) in
manual_dir: `--manual_dir=DIR` of `python -m data_pipelines.datasets.build`, by default
`<data_dir>/downloads/manual/`. Build `--dataset=msmt17/v1` or `msmt17/v2`.
"""

# split -> (list files, which folder their paths are relative to)
_SPLIT_LISTS = {
  "train": (("list_train.txt", "list_val.txt"), "train"),
  "query": (("list_query.txt",), "test"),
  "gallery": (("list_gallery.txt",), "test"),
}
_PUBLISHED = {"train": (1041, 32621), "query": (3060, 11659), "gallery": (3060, 82161)}


@dataclasses.dataclass
class Msmt17Config(tfds.core.BuilderConfig):
  """MSMT17 release: folder names of the train and test images."""

  train_dir: str = "train"
  test_dir: str = "test"
  root_hint: str = "msmt17"


class Msmt17(reid_builder.ReidBuilder):
  """MSMT17: 1,041 train ids (32,621 images); 11,659 query; 82,161 gallery images."""

  BUILDER_CONFIGS = [
    Msmt17Config(
      name="v1",
      description="MSMT17_V1: train/, test/.",
      train_dir="train",
      test_dir="test",
      root_hint="msmt17_v1",
    ),
    Msmt17Config(
      name="v2",
      description="MSMT17_V2 (faces blurred): mask_train_v2/, mask_test_v2/.",
      train_dir="mask_train_v2",
      test_dir="mask_test_v2",
      root_hint="msmt17_v2",
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "v2"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  PUBLISHED_STATS = {"v1": _PUBLISHED, "v2": _PUBLISHED}
  DESCRIPTION = (
    "MSMT17 person re-identification: 4,101 identities from 15 cameras (12 outdoor, "
    "3 indoor), Faster R-CNN boxes. Train = list_train + list_val, ids relabelled "
    "0..1040 (mapping in metadata['train_label_to_pid']); query/gallery keep the ids "
    "of the list files."
  )
  HOMEPAGE = "http://www.pkuvmc.com/dataset.html"
  CITATION = """\
@inproceedings{wei2018person,
  title={Person Transfer GAN to Bridge Domain Gap for Person Re-Identification},
  author={Wei, Longhui and Zhang, Shiliang and Gao, Wen and Tian, Qi},
  booktitle={CVPR},
  year={2018}
}"""

  def _root_name_hints(self) -> tuple[str, ...]:
    return (self.builder_config.root_hint,)

  def _folder(self, which: str) -> str:
    return self.builder_config.train_dir if which == "train" else self.builder_config.test_dir

  def _markers(self) -> list[str]:
    lists = [name for split in reid_builder.SPLITS for name in _SPLIT_LISTS[split][0]]
    return [self._folder("train"), self._folder("test"), *lists]

  def _list_split(
    self, root: manual_files.DatasetRoot, split: str
  ) -> list[reid_builder.ImageEntry]:
    list_names, which = _SPLIT_LISTS[split]
    folder = self._folder(which)
    entries = []
    for list_name in list_names:
      entries.extend(self._read_list(root, list_name, folder))
    if not entries:
      raise errors.UserError(
        f"{self.dataset_title}: split {split!r} has no images: list files "
        f"{[root.location(n) for n in list_names]} are empty."
      )
    return sorted(entries, key=lambda e: e.file_name)

  def _read_list(
    self, root: manual_files.DatasetRoot, list_name: str, folder: str
  ) -> list[reid_builder.ImageEntry]:
    """Parses one list file (`relpath pid` lines) into entries under `folder`."""
    entries = []
    for lineno, line in enumerate(root.read_text(list_name).splitlines(), start=1):
      if not line.strip():
        continue
      where = f"{root.location(list_name)} line {lineno}"
      fields = line.split()
      if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise errors.UserError(f"{where}: expected 'relpath pid', got {line!r}.")
      relpath, pid = fields[0], int(fields[1])
      file_name = relpath.rsplit("/", 1)[-1]
      full = f"{folder}/{relpath}"
      try:
        name_pid, camid = naming.parse_msmt17_name(file_name)
      except ValueError as e:
        raise errors.UserError(f"{where}: {e}") from e
      if name_pid != pid:
        raise errors.UserError(
          f"{where}: pid {pid} in the list disagrees with pid {name_pid} in the file "
          f"name {file_name!r}."
        )
      if not root.is_file(full):
        raise errors.InputNotFoundError(f"{where}: image {root.location(full)} does not exist.")
      entries.append(reid_builder.ImageEntry(file_name, full, pid, camid))
    return entries
