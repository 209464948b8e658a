"""`.ci/run` runs exactly the test command the README gives a newcomer."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  readme = (REPO / "README.md").read_text()
  block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```\s*<!-- /test-command -->", readme)
  assert block, "README.md has no <!-- test-command --> block"
  commands = [
    line
    for line in (REPO / ".ci" / "run").read_text().splitlines()
    if line.strip() and not line.startswith(("#", "set ", "cd "))
  ]
  assert commands == [block.group(1)]
  # It sets up its own environment from the system Python: a fresh venv and the test
  # requirements, which include the runtime ones.
  assert block.group(1).startswith("python3 -m venv .venv && .venv/bin/pip install")
  assert "-r requirements.txt" in (REPO / "requirements-test.txt").read_text()
