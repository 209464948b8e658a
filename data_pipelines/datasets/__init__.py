"""Person-ReID datasets as tensorflow-datasets builders (no TensorFlow needed).

Importing this package registers the builders `market1501`, `dukemtmc_reid`,
`msmt17` (configs `v1`, `v2`) and `cuhk03_np` (configs `detected`, `labeled`) with
TFDS, so `tfds.builder('market1501', data_dir=...)` works afterwards. Build with
`python -m data_pipelines.datasets.build`; read with
`data_pipelines.datasets.source.load_source`.
"""

from data_pipelines.datasets import cuhk03_np, dukemtmc_reid, market1501, msmt17  # noqa: F401
