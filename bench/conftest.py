"""pytest configuration for the benchmark suites in bench/.

- `--benchmark`: the promised spelling of pytest-benchmark's `--benchmark-only` (`pytest bench/ --benchmark`).
- Every result JSON is stamped with the GPU name, driver and library versions (`machine_info["deblurgan"]`).
- A plain `pytest` from the repo root never collects bench/ (pyproject: testpaths = ["tests"]).
- OMP_WAIT_POLICY=PASSIVE unless set: torch's OpenMP threads and those of inductor-compiled CPU code (or
  onnxruntime) otherwise spin against each other after a compiled run, and on a 2-core machine that made later
  eager CPU timings in the same process up to ~300x slower. It must be set before torch is imported.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "torch" in sys.modules:  # too late for this process's OpenMP runtime; say so rather than mis-time silently
    sys.stderr.write("bench/conftest.py: torch was imported before OMP_WAIT_POLICY could be set\n")

import pytest  # noqa: E402

from bench.timing import environment  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        dest="deblurgan_benchmark",
        help="run only the benchmarks (alias of pytest-benchmark's --benchmark-only)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest-benchmark reads benchmark_only in its own (trylast) pytest_configure, so setting it here is enough.
    if config.getoption("deblurgan_benchmark", False):
        if not config.pluginmanager.hasplugin("benchmark"):
            raise pytest.UsageError("--benchmark needs pytest-benchmark: pip install pytest-benchmark")
        config.option.benchmark_only = True


@pytest.hookimpl(optionalhook=True)  # a pytest-benchmark hook: no error where the plugin is missing
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["deblurgan"] = environment()
