"""Market-1501 as a TFDS builder (`market1501`), read from the manual download."""

from data_pipelines.datasets import naming, reid_builder

_INSTRUCTIONS = """\
Market-1501 (Zheng et al., ICCV 2015) is not downloadable automatically. Get
`Market-1501-v15.09.15.zip` from the authors' project page
(https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html, formerly
http://www.liangzheng.org/Project/project_reid.html) or a mirror you are licensed to use,
and put either the zip itself or the extracted folder `Market-1501-v15.09.15/` (holding
`bounding_box_train/`, `query/`, `bounding_box_test/`) in manual_dir:
`--manual_dir=DIR` of `python -m data_pipelines.datasets.build`, by default
`<data_dir>/downloads/manual/`.
"""


class Market1501(reid_builder.ReidBuilder):
  """Market-1501: 751 train ids (12,936 images); 3,368 query; 15,913 gallery images."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  PARSE_NAME = staticmethod(naming.parse_market_name)
  HAS_JUNK_AND_DISTRACTORS = True
  ROOT_NAME_HINTS = ("market",)
  PUBLISHED_STATS = {
    None: {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)},
  }
  DESCRIPTION = (
    "Market-1501 person re-identification: 1,501 identities seen by 6 cameras at "
    "Tsinghua University, DPM-detected boxes. Train ids are relabelled 0..750 (mapping "
    "in metadata['train_label_to_pid']); query/gallery keep the original ids; junk "
    "boxes (pid -1) are dropped, distractors (pid 0) kept in the gallery."
  )
  HOMEPAGE = "https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html"
  CITATION = """\
@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and Wang, Jingdong
          and Tian, Qi},
  booktitle={ICCV},
  year={2015}
}"""
