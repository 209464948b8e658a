r"""Installs the evaluation benchmark's peers: fast-reid 1.4.0 and its Cython ranking.

  python benchmarks/setup_peers.py          # then: python benchmarks/evaluation.py

1. `pip install --no-deps -r benchmarks/requirements.txt` into this interpreter's
   environment: PyPI `fastreid==1.4.0` (without its training dependencies, which its
   evaluation code does not use) and Cython.
2. Builds fast-reid's Cython extension (`rank_cy`, `evaluate_rank`'s fast path) in the
   installed package's `fastreid/evaluation/rank_cylib` folder, as fast-reid's own
   `Makefile` there does (`python setup.py build_ext --inplace`); needs a C compiler.
3. Imports it the way `benchmarks/evaluation.py` does (`peers.load_fastreid`) and
   prints what it found.

Benchmark-only: fsaf-jax and its tests never import fast-reid.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks import peers  # noqa: E402

REQUIREMENTS = pathlib.Path(__file__).resolve().parent / "requirements.txt"


def main() -> int:
  pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(REQUIREMENTS)]
  print("+", " ".join(pip), flush=True)
  subprocess.run(pip, check=True)
  folder = peers.fastreid_folder()
  if folder is None:
    print("fastreid is not importable after the install; see pip's output above.")
    return 1
  cylib = folder / "evaluation" / "rank_cylib"
  build = [sys.executable, "setup.py", "build_ext", "--inplace"]
  print(f"+ (cd {cylib} && {' '.join(build)})", flush=True)
  subprocess.run(build, cwd=cylib, check=True)
  shutil.rmtree(cylib / "build", ignore_errors=True)  # as fast-reid's Makefile
  found = peers.load_fastreid()
  print(f"fast-reid: {found.describe()}")
  return 0 if found.evaluate_rank_cython is not None else 1


if __name__ == "__main__":
  sys.exit(main())
