"""pytest configuration for the benchmark suites in bench/.

- `--benchmark`: the promised spelling of pytest-benchmark's `--benchmark-only` (`pytest bench/ --benchmark`).
- Every result JSON is stamped with the GPU name, driver and library versions (`machine_info["deblurgan"]`).
- A plain `pytest` from the repo root never collects bench/ (pyproject: testpaths = ["tests"]).
- A benchmark whose test failed (e.g. its correctness check after `measure`) is marked as errored, and
  pytest-benchmark leaves errored benchmarks out of the JSON: a wrong result never becomes a report row.
- A run stopped by SIGINT (bench/gpu_check.sh's time limits) still writes its JSON with every finished row:
  the benchmark that was interrupted (registered by pytest-benchmark before its warm-up, without data, or with
  only part of its rounds) is dropped at session end instead of making pytest-benchmark's JSON writer fail.
- OMP_WAIT_POLICY=PASSIVE unless set: torch's OpenMP threads and those of inductor-compiled CPU code (or
  onnxruntime) otherwise spin against each other after a compiled run, and on a 2-core machine that made later
  eager CPU timings in the same process up to ~300x slower. It must be set before torch is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import Any

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    outcome = yield
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if outcome.get_result().failed and hasattr(fixture, "has_error"):
        fixture.has_error = True  # pytest_benchmark_generate_json skips benchmarks with has_error


def _finished(bench: Any) -> bool:
    """A pytest-benchmark entry whose `measure` call completed: timed rounds recorded and `timing` (written last)."""
    return bool(bench) and bool(bench.extra_info.get("timing"))


# tryfirst: the outermost wrapper, so this runs before pytest-benchmark's own wrapper writes the JSON
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, Any, None]:
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None:
        dropped = [b.name for b in bs.benchmarks if not _finished(b)]
        bs.benchmarks[:] = [b for b in bs.benchmarks if _finished(b)]
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if dropped and reporter is not None:
            reporter.write_line(f"bench/conftest.py: unfinished benchmarks left out of the JSON: {', '.join(dropped)}")
    yield


@pytest.hookimpl(optionalhook=True)  # a pytest-benchmark hook: no error where the plugin is missing
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["deblurgan"] = environment()
