"""Two training steps of the tiny FSAF on fixed P x K batches: the shared fixture of the
data-parallel tests (tests/fsaf_jax/training/test_train_step.py, test_distributed.py and
the multi-process worker beside them)."""

import functools

import jax
import numpy as np

from configs.tiny import get_config
from fsaf_jax.core.mesh import make_mesh, replicated
from fsaf_jax.models.registry import create_model
from fsaf_jax.training.train_state import create_train_state
from fsaf_jax.training.train_step import make_train_step

NUM_CLASSES = 8
BATCH = 16  # P=4 identities x K=4 images
STEPS_PER_EPOCH = 10
SEED = 0


def make_batches(seed: int = SEED, num: int = 2) -> list[dict[str, np.ndarray]]:
  """P x K batches of piecewise-constant uint8 images [16, 64, 32, 3] (4x4 blocks:
  better conditioned than per-pixel noise, whose tiny BatchNorm variances amplify
  float rounding) and int32 labels [16] (4 of the 8 classes, 4 images each)."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num):
    coarse = rng.integers(0, 256, (BATCH, 16, 8, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    labels = np.repeat(rng.permutation(NUM_CLASSES)[:4], 4).astype(np.int32)
    batches.append({"image": images, "label": labels})
  return batches


def tree_rel_diff(a, b) -> float:
  """|a - b| / |b| over the whole pytree (L2 norms of all leaves together)."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  num = sum(
    np.sum(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
    for x, y in zip(leaves_a, leaves_b, strict=True)
  )
  den = sum(np.sum(np.square(np.asarray(y, np.float64))) for y in leaves_b)
  return float(np.sqrt(num / den))


def to_host(tree):
  """Numpy copies of every array leaf (works for replicated multi-process arrays)."""
  return jax.tree.map(np.array, tree)


@functools.cache
def config(center_weight: float = 0.0):
  """`configs/tiny.py` with the given centre-loss weight (the BoT recipe otherwise)."""
  c = get_config()
  c.loss.center_weight = center_weight
  # A tenth of the recipe's lr (BoT's epoch 0: 3.5e-5 x 0.109 = 3.8e-6 here): the
  # N-device test compares float rounding, which Adam's +-lr steps on near-zero
  # gradients amplify in proportion to the lr.
  c.optim.base_lr = 3.5e-5
  # The attention blocks' last BN at 0 (the recipe's init, tested in test_train_state)
  # shrinks the first gradients ~16x (norm 535 -> 33 here), so the same absolute
  # rounding between two XLA programs of one step would read 50x larger relative.
  c.init.zero_init_attention_bn = False
  return c


@functools.cache
def model():
  return create_model(config().model, NUM_CLASSES)


def initial_state(mesh, center_weight: float = 0.0):
  """The train state at step 0, replicated over `mesh` (same on every process)."""
  c = config(center_weight)
  return create_train_state(
    c,
    model(),
    jax.random.key(SEED),
    NUM_CLASSES,
    c.input.image_size,
    steps_per_epoch=STEPS_PER_EPOCH,
    mesh=mesh,
  )


@functools.cache
def initial_state_host(center_weight: float = 0.0):
  """`initial_state` as host arrays, created once per loss config."""
  return to_host(initial_state(make_mesh(jax.devices()[:1]), center_weight))


@functools.cache
def run(num_devices: int, center_weight: float = 0.0):
  """Two steps on a mesh over the first `num_devices` local devices.

  Returns:
    `(states, metrics)`: host copies of the state after each step, and the metrics of
    each step as Python floats.
  """
  mesh = make_mesh(jax.devices()[:num_devices])
  state = jax.device_put(initial_state_host(center_weight), replicated(mesh))
  step = make_train_step(model(), config(center_weight).loss, mesh)
  states, metrics = [], []
  for batch in make_batches():
    state, m = step(state, batch)
    states.append(to_host(state))
    metrics.append({k: float(v) for k, v in m.items()})
  return states, metrics
