"""The README's test command (and .ci/run, which runs it) ends with pytest's summary line ("N passed"):
`-q` in pyproject's addopts on top of the command's own `-q` made it `-qq`, which prints no summary."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from conftest import ROOT


def readme_test_command() -> list[str]:
    """The pytest arguments of the README's one test command (`... && .venv/bin/python -m pytest -q`)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    words = shlex.split(command.split("&&")[-1])
    return words[words.index("pytest") + 1:]


def test_ci_runs_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/python -m pytest " + " ".join(readme_test_command()) in ci


def test_the_readme_command_prints_the_summary_line(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n", encoding="utf-8")
    # the project's pytest settings (pyproject.toml), on a one-test file
    args = [sys.executable, "-m", "pytest", *readme_test_command(), "-c", str(ROOT / "pyproject.toml"),
            "--rootdir", str(ROOT), "-p", "no:cacheprovider", str(tmp_path / "test_one.py")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^1 passed", done.stdout, re.M), done.stdout
