"""Global pooling of [N, H, W, C] feature maps to [N, C] embeddings."""

import jax.numpy as jnp

from fsaf_jax.core.errors import UserError

POOLINGS = ("avg", "gem")


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over H and W, accumulated in float32: [N, H, W, C] -> [N, C] float32."""
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)


def gem_pool(x: jnp.ndarray, p: float = 3.0, eps: float = 1e-6) -> jnp.ndarray:
  """Generalised-mean pooling (Radenovic et al.): (mean_hw(clip(x, eps)^p))^(1/p).

  Args:
    x: [N, H, W, C] features (non-negative after a ReLU; clipped at `eps`).
    p: fixed exponent; p = 1 is average pooling, p -> inf max pooling.
    eps: lower clip keeping the power and root finite.

  Returns:
    [N, C] float32.
  """
  if p <= 0:
    raise UserError(f"model.gem_p={p!r}: the GeM exponent must be positive")
  x = jnp.maximum(x.astype(jnp.float32), eps)
  return jnp.mean(x**p, axis=(1, 2)) ** (1.0 / p)
