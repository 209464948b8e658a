"""fsaf-jax: the FSAF person re-identification network and toolbox in JAX/Flax."""

__version__ = "0.1.0"
