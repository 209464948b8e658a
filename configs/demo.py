r"""The CPU demo: the tiny FSAF on the embedded synthetic dataset, end to end.

Run (from the repository root, on a fresh machine: no download):
  python train.py --config=configs/demo.py --workdir=workdirs/demo
Expected time: a few minutes on a 2-core CPU for the whole command (data generation,
TFDS build, compilation, 1,875 steps, evaluations); the README has the measurements.

train.py runs it through `fsaf_jax.demo.run` (the `demo` section below marks it). It
writes the synthetic Market-1501-layout dataset into WORKDIR/data/synthetic (1,000
training and 100 test identities, 128x64 JPEGs; `config.demo.synthetic`), builds it
with the real `market1501` TFDS builder into WORKDIR/data/tfds, trains the FSAF
architecture (IBN-a, MHSA in Conv4_x/Conv5_x, ECA, Conv3-5 fusion, BNNeck; widths 16-128
instead of 64-512) on 64x32 crops for 15 epochs of BoT's sampler (125 P x K = 16 x 4
batches each), evaluates the query / gallery split
(WORKDIR/eval/step_<N>/metrics.json, ranked_list.png) and prints Rank-1 / mAP beside
the same network untrained (its initialisation) and the colour-histogram baseline
(`config.demo.compare_baselines`; WORKDIR/eval/step_<N>/baselines.json); the README
gives the figures it prints.

The synthetic people differ by clothing layout and accessories more than by colour
statistics (sibling identities share their colours), so the colour histogram stays
low; the figures say the pipeline learns identity, nothing about real Market-1501.
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  """Tiny FSAF (widths 16-128) on 64x32 synthetic pedestrians, a short schedule."""
  config = tiny.get_config()
  config.model.stem_width = 16
  config.model.widths = (16, 32, 64, 128)

  config.input.dataset = "market1501"
  config.input.data_dir = ""  # WORKDIR/data/tfds
  config.input.manual_dir = ""  # WORKDIR/data/synthetic
  config.input.num_identities = 16
  config.input.num_instances = 4
  config.input.num_workers = 0  # in-process decoding keeps up and leaves XLA both cores
  config.input.pad = 2  # the recipe's 10 px at 256x128 is ~2 px at 64x32
  config.input.erasing_prob = 0.0  # the synthetic data has occluders already
  config.input.eval_batch_size = 128

  # The BoT recipe's shape (per-epoch warmup staircase, x0.1 step) on a short schedule;
  # from scratch, a small network takes a larger Adam step than the recipe's 3.5e-4.
  # BoT's sampler: 1,000 identities x 8 images = 2 K-chunks each, 125 batches per epoch.
  config.optim.base_lr = 2e-2
  config.optim.warmup_epochs = 2
  config.optim.milestones = (12,)
  config.train.num_epochs = 15
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 500
  config.train.eval_every_epochs = 0  # evaluate at the end only

  config.eval.flip = True

  # --- The demo's own fields (`fsaf_jax.demo`; no other config has them). ----------------
  config.demo = ml_collections.ConfigDict()
  # The embedded synthetic dataset (`data_pipelines.synthetic`, Market-1501 layout),
  # written into `input.manual_dir` ('' = WORKDIR/data/synthetic) unless already there
  # (`input.dataset` must be 'market1501'). The fields are `SyntheticConfig`'s.
  s = config.demo.synthetic = ml_collections.ConfigDict()
  s.num_ids = 1100
  s.num_train_ids = 1000
  s.train_images_per_id = 8
  s.query_per_id = 2
  s.gallery_per_id = 8
  s.num_cameras = 6
  s.min_cameras_per_id = 2
  s.num_distractors = 80
  s.num_junk = 40
  s.image_size = (128, 64)
  s.seed = 0
  # `synthetic_render.Difficulty`: easier than the generator's defaults where 64x32
  # crops lose the cues, still with sibling identities that share their colours (a
  # colour histogram cannot separate them).
  d = s.difficulty = ml_collections.ConfigDict()
  d.palette_size = 12
  d.group_size = 2
  d.colour_cast = 0.1
  d.illumination = 0.3
  d.image_jitter = 0.04
  d.blur = 0.5
  d.resolution_loss = 0.8
  d.noise = 5.0
  d.clutter = 2
  d.occlusion_prob = 0.1
  d.pose_jitter = 0.5
  d.side_view_prob = 0.3
  # At the end of training, also score the untrained network (same init) and the
  # colour-histogram baseline on the same query / gallery; print the table and write
  # WORKDIR/eval/step_<N>/baselines.json.
  config.demo.compare_baselines = True
  return config
