"""The CPU demo beside the core: synthetic data, the untrained-network and colour-histogram
comparison, and the run that ties them to training.

`run.run_demo` is what `python train.py --config=configs/demo.py` runs (train.py hands
it every config with a `demo` section); `synthetic_data` writes the embedded synthetic
dataset where the run reads it; `untrained` re-creates the network as training starts;
`baselines` scores it and `color_histogram` (also `python -m
fsaf_jax.demo.color_histogram`) beside the trained network.
"""
