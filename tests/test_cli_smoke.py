"""Every console script: importable, `--help` works, a bad option is one line on stderr and exit 2."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_resolves_and_has_usage_docstring(name):
    module, func = SCRIPTS[name].split(":")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, func))
    assert mod.__doc__ and "python -m" in mod.__doc__, f"{module} needs a usage docstring"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_and_bad_option(name):
    module = SCRIPTS[name].split(":")[0]
    ok = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"usage: python -m {module} " in ok.stdout  # one program name, however it was started
    bad = subprocess.run(
        [sys.executable, "-m", module, "--no-such-option-xyz"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "no-such-option-xyz" in bad.stderr or "error" in bad.stderr
