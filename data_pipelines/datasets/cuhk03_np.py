"""CUHK03-NP as a TFDS builder (`cuhk03_np/detected`, `cuhk03_np/labeled`).

The "new protocol" split of CUHK03 (767 train / 700 test identities) as released by
Zhong et al. (CVPR 2017) in Market-1501 layout: `cuhk03-np/{detected,labeled}/
{bounding_box_train,query,bounding_box_test}/` with PNG images named like
`0001_c1_1.png` (pid, camera 1 or 2 of the pair, image index).
"""

import dataclasses

import tensorflow_datasets as tfds

from data_pipelines.datasets import naming, reid_builder

_INSTRUCTIONS = """\
CUHK03-NP is not downloadable automatically. Get `cuhk03-np.zip` via the links at
https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP (CUHK03 itself:
Li et al., CVPR 2014, terms at http://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html)
and put the zip or the extracted folder `cuhk03-np/` (holding `detected/` and `labeled/`,
each with `bounding_box_train/`, `query/`, `bounding_box_test/`) in manual_dir:
`--manual_dir=DIR` of `python -m data_pipelines.datasets.build`, by default
`<data_dir>/downloads/manual/`. Build `--dataset=cuhk03_np/detected` or
`cuhk03_np/labeled`.
"""


@dataclasses.dataclass
class Cuhk03NpConfig(tfds.core.BuilderConfig):
  """Which boxes: 'detected' (DPM) or 'labeled' (hand-drawn)."""

  subset: str = "detected"


class Cuhk03Np(reid_builder.ReidBuilder):
  """CUHK03-NP: 767 train ids; 1,400 query images; 700 test ids."""

  name = "cuhk03_np"
  BUILDER_CONFIGS = [
    Cuhk03NpConfig(name="detected", description="DPM-detected boxes.", subset="detected"),
    Cuhk03NpConfig(name="labeled", description="Hand-drawn boxes.", subset="labeled"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "detected"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_FORMAT = "png"
  PARSE_NAME = staticmethod(naming.parse_cuhk03_np_name)
  ROOT_NAME_HINTS = ("cuhk03",)
  PUBLISHED_STATS = {
    "detected": {"train": (767, 7365), "query": (700, 1400), "gallery": (700, 5332)},
    "labeled": {"train": (767, 7368), "query": (700, 1400), "gallery": (700, 5328)},
  }
  DESCRIPTION = (
    "CUHK03 under the new protocol (CUHK03-NP, Zhong et al. 2017): 1,467 identities "
    "from 5 camera pairs, split 767 train / 700 test. Train ids are relabelled 0..766 "
    "(mapping in metadata['train_label_to_pid']); query/gallery keep the original ids."
  )
  HOMEPAGE = "https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP"
  CITATION = """\
@inproceedings{li2014deepreid,
  title={DeepReID: Deep Filter Pairing Neural Network for Person Re-identification},
  author={Li, Wei and Zhao, Rui and Xiao, Tong and Wang, Xiaogang},
  booktitle={CVPR},
  year={2014}
}
@inproceedings{zhong2017re,
  title={Re-ranking Person Re-identification with k-reciprocal Encoding},
  author={Zhong, Zhun and Zheng, Liang and Cao, Donglin and Li, Shaozi},
  booktitle={CVPR},
  year={2017}
}"""

  def _split_folder(self, split: str) -> str:
    return f"{self.builder_config.subset}/{self.SPLIT_FOLDERS[split]}"
