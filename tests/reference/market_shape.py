"""Market-1501-shaped training labels: images per identity, for sampler and schedule tests."""

import numpy as np

NUM_IDS, NUM_IMAGES, MIN_IMAGES, MAX_IMAGES = 751, 12936, 2, 72


def market_shaped_counts(seed: int = 0) -> np.ndarray:
  """Images per identity: 751 identities, 12,936 images, 2 to 72 each (both bounds hit).

  Log-normal around 14 images, then nudged one image at a time to the exact total.

  Returns:
    int [751].
  """
  rng = np.random.default_rng(seed)
  counts = np.clip(np.round(rng.lognormal(np.log(14), 0.6, NUM_IDS)), MIN_IMAGES, MAX_IMAGES)
  counts = counts.astype(int)
  counts[:2] = MIN_IMAGES, MAX_IMAGES
  while (diff := NUM_IMAGES - counts.sum()) != 0:
    j = rng.integers(2, NUM_IDS)
    counts[j] = np.clip(counts[j] + np.sign(diff), MIN_IMAGES, MAX_IMAGES)
  return counts
