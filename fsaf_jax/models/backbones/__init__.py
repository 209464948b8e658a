"""Backbone plug-ins: each module here registers one builder with
`fsaf_jax.models.plugin.register_backbone`; the registry imports them all on first use."""
