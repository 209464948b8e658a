"""The FSAF network: ResNet50-IBN-a + BoTNet MHSA + ECA + Conv3-5 fusion + BNNeck.

Build one from a config with `fsaf_jax.models.registry.create_model(config.model,
num_classes)`: `config.model.name` picks the model, `config.model.backbone` its backbone.
"""
