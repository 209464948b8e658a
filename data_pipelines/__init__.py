"""Datasets (TFDS builders, the embedded synthetic generator) and grain input pipelines."""
