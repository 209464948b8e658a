"""The package layers hold: the import-linter contracts in pyproject.toml pass (and do
catch an upward import), imports sit at module top, configs import only configs and
ml_collections."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.reference import ceiling

REPO = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")
LIBRARY = ("fsaf_jax", "data_pipelines", "configs")
# Imported inside functions on purpose: optional extras (the weight-conversion
# reference, benchmark peers), never needed by a plain training or evaluation run.
OPTIONAL_MODULES = ("torch", "fastreid", "tensorflow", "jax2onnx")
# Modules that import inside functions for a reason of their own.
LATE_IMPORTS = {
  # Chooses malloc settings before JAX's backend starts: it looks at JAX only if it
  # is already imported, and must not import it (nor the accelerator plugins) itself.
  "fsaf_jax/core/host_allocator.py": ("jax", "jax_plugins", "pkgutil"),
}


def lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": os.fspath(root)}
  return ceiling.run(
    [os.fspath(LINT_IMPORTS), "--no-cache"],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    ceiling=ceiling.SHORT,
  )


def test_import_contracts_are_kept():
  result = lint_imports(REPO)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "BROKEN" not in result.stdout
  assert "Contracts: 6 kept, 0 broken." in result.stdout


UPWARD_IMPORTS = [
  ("fsaf_jax/core/mesh.py", "fsaf_jax.training.train_state"),
  ("fsaf_jax/models/head.py", "fsaf_jax.evaluation.metrics"),
  ("data_pipelines/augment.py", "fsaf_jax.core.mesh"),
  ("configs/tiny.py", "data_pipelines.synthetic"),
]


@pytest.fixture(scope="module")
def upward_lint(tmp_path_factory) -> subprocess.CompletedProcess:
  """`lint-imports` on one copy of the library holding every upward import of
  UPWARD_IMPORTS (one run: each breaks a contract of its own, and is named on its own)."""
  root = tmp_path_factory.mktemp("upward")
  for name in LIBRARY:
    shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(REPO / "pyproject.toml", root)
  for module, upward in UPWARD_IMPORTS:
    path = root / module
    path.write_text(path.read_text() + f"\nimport {upward}  # noqa: E402\n")
  return lint_imports(root)


@pytest.mark.parametrize("module, upward", UPWARD_IMPORTS)
def test_an_upward_import_breaks_a_contract(upward_lint, module, upward):
  result = upward_lint
  assert result.returncode != 0
  assert "BROKEN" in result.stdout
  importer = module.removesuffix(".py").replace("/", ".")
  assert f"{importer} -> {upward}" in " ".join(result.stdout.split())


def _library_files():
  for name in LIBRARY:
    yield from sorted((REPO / name).rglob("*.py"))
  yield REPO / "train.py"
  yield REPO / "eval.py"


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  return [node.module or ""]


def test_imports_are_at_module_top():
  """Function-level imports only for optional dependencies (no hidden cycles)."""
  inner = []
  for path in _library_files():
    tree = ast.parse(path.read_text(), filename=os.fspath(path))
    where = os.fspath(path.relative_to(REPO))
    allowed = OPTIONAL_MODULES + LATE_IMPORTS.get(where, ())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nodes = {id(n): n for f in functions for n in ast.walk(f)}.values()
    for node in nodes:
      if isinstance(node, ast.Import | ast.ImportFrom):
        for name in _imported(node):
          if name.split(".")[0] not in allowed:
            inner.append(f"{where}:{node.lineno} imports {name}")
  assert not inner, "imports inside functions:\n" + "\n".join(sorted(inner))


def test_configs_import_only_configs_and_ml_collections():
  wrong = []
  for path in sorted((REPO / "configs").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import | ast.ImportFrom):
        for name in _imported(node):
          if name.split(".")[0] not in ("configs", "ml_collections", "__future__"):
            wrong.append(f"{path.name}:{node.lineno} imports {name}")
  assert not wrong, "\n".join(wrong)
