"""ReID loss terms, registered by name (`fsaf_jax.losses.registry`), and their sum
(`fsaf_jax.losses.reid_loss`)."""
