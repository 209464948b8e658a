"""The FSAF network: ResNet50-IBN-a + BoTNet MHSA + ECA + Conv3-5 fusion + BNNeck.

Build one from a config with `fsaf_jax.models.fsaf.create_model(config.model,
num_classes)`.
"""
