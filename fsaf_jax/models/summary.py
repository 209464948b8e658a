r"""Parameter counts and output shapes of the model a config describes, without compiling.

  python -m fsaf_jax.models.summary --config=configs/fsaf_market.py \
      --config.model.num_classes=751

Shapes come from `jax.eval_shape` (abstract evaluation: no FLOPs, no XLA compile), so
the full-size model is summarised in about a second on a CPU.
"""

import collections
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

from fsaf_jax.core import cli
from fsaf_jax.models.registry import create_model

OUTPUT_ORDER = ("stem", "conv2", "conv3", "conv4", "conv5", "fused", "feat", "bn_feat", "logits")


def abstract_variables(
  config: ml_collections.ConfigDict, num_classes: int, batch_size: int = 1
) -> tuple[Mapping, Mapping]:
  """Shapes of the variables and of the outputs of `create_model(config.model, ...)`.

  Args:
    config: a full config (`model` and `input.image_size` are read).
    num_classes: classifier outputs.
    batch_size: leading dimension of the abstract input.

  Returns:
    (variables, outputs): pytrees of `jax.ShapeDtypeStruct`; variables is
    {'params', 'batch_stats'}, outputs the model's dict (eval mode).
  """
  model = create_model(config.model, num_classes)
  height, width = config.input.image_size
  x = jax.ShapeDtypeStruct((batch_size, height, width, 3), model.dtype)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return variables, outputs


def count_by_prefix(tree: Mapping, depth: int) -> dict[str, int]:
  """Number of elements of `tree` grouped by the first `depth` levels of the path.

  Returns:
    {'backbone/layer1_0': n, ...}, sorted by path.
  """
  counts = collections.defaultdict(int)
  for path, leaf in sorted(traverse_util.flatten_dict(tree).items()):
    counts["/".join(path[:depth])] += int(leaf.size)
  return dict(counts)


def summarize(config: ml_collections.ConfigDict, batch_size: int = 1) -> str:
  """The text the CLI prints: per-module and total parameter counts, output shapes.

  Raises:
    ValueError: `config.model.num_classes` is not set (-1).
  """
  num_classes = config.model.num_classes
  if num_classes < 1:
    raise ValueError(
      f"model.num_classes={num_classes}: the summary needs the number of training "
      "identities, e.g. --config.model.num_classes=751 (Market-1501)"
    )
  variables, outputs = abstract_variables(config, num_classes, batch_size)
  params, stats = variables["params"], variables.get("batch_stats", {})
  lines = [
    f"FSAF, input {tuple(config.input.image_size)}, {num_classes} classes, "
    f"model dtype {config.model.dtype}",
    "",
    "Parameters per module:",
  ]
  for name, n in count_by_prefix(params, depth=2).items():
    lines.append(f"  {name:<32s} {n:>12,d}")
  lines.append("")
  for name, n in count_by_prefix(params, depth=1).items():
    lines.append(f"  {name + ' (total)':<32s} {n:>12,d}")
  total = sum(count_by_prefix(params, depth=1).values())
  total_stats = sum(count_by_prefix(stats, depth=1).values()) if stats else 0
  lines += [
    f"  {'TOTAL params':<32s} {total:>12,d}",
    f"  {'batch_stats (not trained)':<32s} {total_stats:>12,d}",
    "",
    "Outputs:",
  ]
  order = {key: i for i, key in enumerate(OUTPUT_ORDER)}
  for key, value in sorted(outputs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
    lines.append(f"  {key:<8s} {str(tuple(value.shape)):<22s} {jnp.dtype(value.dtype).name}")
  return "\n".join(lines)


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config=configs/<name>.py is required")
  try:
    print(summarize(_CONFIG.value, _BATCH_SIZE.value))
  except ValueError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  _BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Batch size of the shapes shown.")
  cli.show_only_ours()  # third-party log lines only with --verbosity=1
  cli.run(main)
