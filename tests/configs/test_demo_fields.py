"""The demo's fields live in configs/demo.py only, and configs import only configs and
ml_collections."""

import ast
import importlib
import pathlib

import pytest

from configs.base import get_base_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
NAMES = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "base"))
# Fields the training config once carried for the demo or for tests.
GONE = ("input.synthetic", "eval.compare_baselines", "train.log_batch_indices")


def _configs(name):
  """Every config of configs/<name>.py: each of its `ARGUMENTS` for a parameterised one."""
  module = importlib.import_module(f"configs.{name}")
  arguments = getattr(module, "ARGUMENTS", None)
  return [module.get_config(a) for a in arguments] if arguments else [module.get_config()]


def _has(config, dotted: str) -> bool:
  for key in dotted.split("."):
    if key not in config:
      return False
    config = config[key]
  return True


@pytest.mark.parametrize("name", NAMES)
def test_only_the_demo_has_demo_fields(name):
  for c in _configs(name):
    assert ("demo" in c) == (name == "demo")
    assert [f for f in GONE if _has(c, f)] == []


def test_base_has_no_demo_fields():
  c = get_base_config()
  assert "demo" not in c and [f for f in GONE if _has(c, f)] == []


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.name)
def test_configs_import_only_ml_collections_and_configs(path):
  tree = ast.parse(path.read_text())
  modules = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      modules.append(node.module or "")
  bad = [m for m in modules if m.split(".")[0] not in ("ml_collections", "configs")]
  assert bad == []
