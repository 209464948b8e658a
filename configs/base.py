"""Defaults shared by every config: the paper's FSAF model and the BoT training recipe.

Not a runnable config itself: the files beside it call `get_base_config()` and change
what differs. Every field a training run can set is declared here, so a misspelt
`--config.x.y=...` override is an error rather than a silently ignored value (the CPU
demo's own fields, `config.demo`, are declared in configs/demo.py).
"""

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the full default config (FSAF `full` on Market-1501, BoT recipe)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = _model()
  config.init = _init()
  config.input = _input()
  config.loss = _loss()
  config.optim = _optim()
  config.train = _train()
  config.eval = _eval()
  return config


def _model() -> ml_collections.ConfigDict:
  """Network: `config.model`."""
  model = ml_collections.ConfigDict()
  # fsaf_jax/models/registry.py: the model and its backbone by name; the backbone reads
  # its own fields below ('resnet_ibn_a': stage_sizes .. eca_placement).
  model.name = "fsaf"
  model.backbone = "resnet_ibn_a"
  model.stage_sizes = (3, 4, 6, 3)  # bottlenecks in Conv2_x..Conv5_x
  model.stem_width = 64
  model.widths = (64, 128, 256, 512)  # bottleneck planes; outputs are 4x these
  model.ibn_stages = (2, 3, 4)  # Conv{n}_x whose bottlenecks use IBN-a
  model.mhsa_stages = (4, 5)  # Conv{n}_x whose 3x3 convs become BoTNet MHSA
  model.num_heads = 4
  model.last_stride = 2  # paper: 2 (Conv5_x 8x4); BoT / fast-reid recipe: 1
  model.eca_placement = "stage"  # 'stage' | 'block' | 'none'
  model.fusion = "concat"  # 'concat' | 'none'
  model.pooling = "avg"  # 'avg' | 'gem'
  model.gem_p = 3.0
  # Training identities. -1: taken from the dataset's metadata when training starts;
  # a positive value must equal it.
  model.num_classes = -1
  model.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16' (params f32)
  return model


def _init() -> ml_collections.ConfigDict:
  """Initialisation: `config.init`."""
  init = ml_collections.ConfigDict()
  # 'imagenet': the backbone's official release (IBN-Net's resnet50_ibn_a-d9d0bb7b.pth),
  # downloaded and converted once into $FSAF_CACHE (fsaf_jax/imagenet_weights.py); or a
  # Flax-native file written by `python -m fsaf_jax.convert_ibn`. Every published recipe
  # starts from it: training refuses '' (naming the file and the command); 'scratch' =
  # random init on purpose (the tiny and demo configs).
  init.pretrained = ""
  # BoTNet: the last BatchNorm scale of every MHSA block starts at 0 (after the
  # pretrained weights are loaded), so the new attention starts as an identity
  # residual. The FSAF paper does not say how it initialises its MHSA blocks; this
  # follows BoTNet, whose blocks it uses. No effect on models without MHSA.
  init.zero_init_attention_bn = True
  return init


def _input() -> ml_collections.ConfigDict:
  """Data: `config.input`."""
  input = ml_collections.ConfigDict()
  # TFDS builder name (optionally 'name/config'): the training set, and the set evaluated
  # by default. With `datasets` set it must be the first of them.
  input.dataset = "market1501"
  # Several training sets, trained on as one (fast-reid's DATASETS.NAMES): entries 'name'
  # or 'name@folder' (the folder holding that dataset's download), as config.eval.datasets,
  # e.g. ('market1501@/data/Market-1501-v15.09.15', 'dukemtmc_reid@/data/DukeMTMC-reID');
  # () = just `dataset`. Identities and cameras are offset per set so they never collide;
  # model.num_classes is their total. Each set is built into data_dir on first use (a
  # second copy of one dataset into <data_dir>/<name>@<folder's base name>). `dataset`
  # must be the first name (docs/datasets.md).
  input.datasets = ()
  # Where TFDS writes/reads ArrayRecord; '' = WORKDIR/data/tfds (train.py).
  input.data_dir = "~/tensorflow_datasets"
  # Extracted dataset folder or archive; '' = TFDS default (<data_dir>/downloads/manual)
  # (the demo: WORKDIR/data/synthetic, configs/demo.py). With `datasets`: the first set's
  # folder, if its entry gives none.
  input.manual_dir = ""
  # torchreid's combineall ("all" protocol): every training set's query and gallery
  # images join its training images, their ids relabelled after its training ids;
  # junk (pid -1) and Market-1501's distractors (pid 0) stay out.
  input.combineall = False
  input.image_size = (256, 128)  # (H, W)
  input.num_identities = 16  # P
  input.num_instances = 4  # K
  # 'bot': BoT's RandomIdentitySampler epoch (each identity visited in proportion to its
  # image count; ~184 batches on Market-1501); 'uniform': every identity once per epoch
  # (num_ids // P batches). data_pipelines/pk_sampler.py.
  input.sampler = "bot"
  input.flip_prob = 0.5
  input.pad = 10
  input.erasing_prob = 0.5
  input.erasing_area = (0.02, 0.4)
  input.erasing_aspect = (0.3, 3.3)
  input.num_workers = 2  # grain worker processes (0 = in-process)
  input.prefetch = 2  # batches prefetched onto the devices
  input.eval_batch_size = 128
  return input


def _loss() -> ml_collections.ConfigDict:
  """Losses: `config.loss`."""
  loss = ml_collections.ConfigDict()
  loss.ce_weight = 1.0
  loss.label_smoothing = 0.1
  loss.triplet_weight = 1.0
  # None = soft-margin triplet (log(1 + exp(d_ap - d_an))).
  loss.triplet_margin = config_dict.placeholder(float)
  loss.triplet_margin = 0.3
  loss.center_weight = 0.0  # centre loss off by default (BoT: 5e-4 when on)
  loss.center_lr = 0.5  # SGD lr of the centre-loss centres (BoT's CENTER_LR)
  return loss


def _optim() -> ml_collections.ConfigDict:
  """Optimiser and schedule: the BoT recipe: `config.optim`."""
  optim = ml_collections.ConfigDict()
  optim.base_lr = 3.5e-4
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 5e-4  # coupled: added to the gradient before Adam
  optim.weight_decay_bias = 5e-4
  optim.weight_decay_norm = 5e-4  # BN/IN scales and shifts
  # 'bot': BoT's WarmupMultiStepLR, a per-epoch staircase (epoch e runs with
  # last_epoch = e + 1); 'fastreid': per-iteration warmup over warmup_iters, then
  # multi-step at epoch ends (fsaf_jax/training/optimizer.py).
  optim.lr_schedule = "bot"
  optim.warmup_epochs = 10  # 'bot' only
  optim.warmup_iters = 0  # 'fastreid' only
  optim.warmup_factor = 0.01
  optim.milestones = (40, 70)
  optim.gamma = 0.1
  return optim


def _train() -> ml_collections.ConfigDict:
  """Loop: `config.train`."""
  train = ml_collections.ConfigDict()
  train.num_epochs = 120
  # Steps per epoch (the unit of the lr schedule); -1 = from the data, as `epoch_length`
  # says: 'sampler' = the sampler's epoch (BoT: floor(sum_i max(n_i, K) // K / P));
  # 'images' = num_train_images // (P * K) (fast-reid's iters_per_epoch).
  train.steps_per_epoch = -1
  train.epoch_length = "sampler"
  train.log_every_steps = 20
  train.checkpoint_every_steps = 500
  train.keep_checkpoints = 3
  train.eval_every_epochs = 40  # 0: evaluate only at the end
  return train


def _eval() -> ml_collections.ConfigDict:
  """Evaluation: `config.eval`."""
  eval = ml_collections.ConfigDict()
  # 'cosine' | 'euclidean'. The evaluator's embeddings are L2-normalised, so both rank
  # alike (|a - b|^2 = 2 - 2 cos(a, b)) and give the same CMC / mAP; 'euclidean'
  # differs only on features that are not normalised (`python -m fsaf_jax.score`).
  eval.metric = "cosine"
  eval.flip = False  # average the embeddings of the image and its mirror
  eval.max_rank = 50
  eval.query_chunk = 1024  # queries scored per chunk (bounds memory)
  # Split the gallery over the mesh's devices to score it (metrics.evaluate_features_
  # sharded), and all images for re-ranking (rerank_sharded): device memory per device
  # falls with their number, for galleries larger than one device holds. Same figures
  # as one device up to rounding (exact ties may flip).
  eval.shard_gallery = False
  eval.rerank = False
  eval.rerank_k1 = 20
  eval.rerank_k2 = 6
  eval.rerank_lambda = 0.3
  # Re-ranking's input: False = the distances as given (BoT's feature-based
  # re_ranking); True = squared first, as fast-reid's and torchreid's re_ranking do
  # (their re-ranked figures for the same features).
  eval.rerank_squared = False
  eval.num_figure_queries = 8  # rows of the ranked-list figure
  # Evaluation sets, each a TFDS name or 'name@folder' (the folder holding its download,
  # built on first use): e.g. ('market1501', 'dukemtmc_reid@/data/DukeMTMC-reID').
  # Empty: the training set, results in eval/step_<N>/; otherwise each set's results
  # in eval/step_<N>/<label>/ (docs/evaluation.md).
  eval.datasets = ()
  return eval
