"""pytest configuration for the benchmark suites in bench/.

- `--benchmark`: the promised spelling of pytest-benchmark's `--benchmark-only` (`pytest bench/ --benchmark`).
- Every result JSON is stamped with the GPU name, driver and library versions (`machine_info["deblurgan"]`).
- A plain `pytest` from the repo root never collects bench/ (pyproject: testpaths = ["tests"]).
"""

from __future__ import annotations

import pytest

from bench.timing import environment


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
        config.option.benchmark_only = True


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["deblurgan"] = environment()
