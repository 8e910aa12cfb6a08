"""Layering: kernels <- deblurgan <- export <- engine; bench measures from outside. No import runs upward."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "kernels": {"deblurgan", "export", "engine", "bench"},
    "deblurgan": {"export", "engine", "bench"},
    "export": {"engine", "bench"},
    "engine": {"bench"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        hit = _imports(path) & FORBIDDEN[package]
        if hit:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_layering_checker_catches_a_violation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import engine.train\nfrom export.onnx import x\n")
    assert _imports(f) == {"engine", "export"}


def test_optional_heavy_dependencies_not_imported_at_package_import():
    code = (
        "import sys, deblurgan, kernels, engine, export\n"
        "bad = [m for m in ('tensorrt', 'av', 'tensorboard') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
