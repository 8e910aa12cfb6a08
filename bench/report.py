"""Markdown report from a pytest-benchmark JSON file.

Usage:
    pytest bench/ --benchmark --benchmark-json=results.json
    python -m bench.report results.json [more.json ...] [--out report.md]

Sections: environment stamp, this run's ceilings (copy bandwidth, matmul), the model table modelled on the runtime
column of Table 1 of the DeblurGAN paper (DeblurGAN vs DeepDeblur), the kernel table (ms, GB/s, % of copy bandwidth,
speed-up vs eager and torch.compile), one table per other group, and what this run did not measure.
Every number comes from the JSON; speed-ups only compare rows of the same run, case and shape (and dtype, except
in groups whose backends differ in dtype by design: inference and training).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deblurgan.cli import run_cli
from deblurgan.errors import DeblurGANError
from deblurgan.fsutil import atomic_write_text

# Paper (Kupyn et al. 2018, Table 1, runtime per GoPro 720p frame on a Titan X): context only, never compared.
PAPER_MS = {"DeblurGAN": 850.0, "DeepDeblur": 4330.0}
GROUP_ORDER = ["models", "kernels", "inference", "large-photo", "train", "data"]
EXPECTED = {
    "kernels": ["eager", "compile", "triton"],
    "inference": ["eager", "eager-fp16", "compile", "aoti", "onnxruntime", "tensorrt"],
    "inference-cpu": ["eager", "eager-bf16", "aoti", "aoti-bf16", "onnxruntime"],
    "train": ["eager", "engine"],
    "data": ["reference"],
}
NOISY_SPREAD = 0.25  # IQR above 25 % of the median: the row is marked "~" (timings unstable)
# speed-up columns per group (default below); a backend "x" also matches "x-fp16" etc. in "not measured"
BASELINES = {"data": ("reference",), "inference": ("eager", "eager-fp16"), "train": ("eager",)}
# groups whose rows differ in dtype by design (fp16 engines, bf16 training): compare with the one baseline row
CROSS_DTYPE_GROUPS = {"inference", "train"}
ENGINE_720P = re.compile(r"generator 720p b\d+$")  # inference rows that join the model table
DEFAULT_BASELINES = ("eager", "compile")


@dataclass
class Row:
    """One benchmark result, normalised."""

    name: str
    group: str
    case: str
    backend: str
    shape: str
    dtype: str
    ms: float  # median per call: CUDA-event device time when recorded, else pytest-benchmark's median
    items: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    spread: float | None = None  # interquartile range / median of the timed rounds

    @property
    def noisy(self) -> bool:
        return self.spread is not None and self.spread > NOISY_SPREAD

    @property
    def ms_per_item(self) -> float:
        return self.ms / max(self.items, 1)


@dataclass
class Results:
    rows: list[Row]
    env: dict[str, Any]
    machine: dict[str, Any]
    commit: dict[str, Any]
    datetime: str

    @property
    def on_gpu(self) -> bool:
        return self.env.get("device") == "cuda"

    def group(self, name: str) -> list[Row]:
        return [r for r in self.rows if r.group == name]

    def calibration(self, case: str) -> Row | None:
        return next((r for r in self.rows if r.group == "calibration" and r.case == case), None)

    @property
    def copy_gbps(self) -> float | None:
        row = self.calibration("copy")
        return row.extra.get("gbps") if row else None

    @property
    def matmul_tflops(self) -> float | None:
        row = self.calibration("matmul")
        return row.extra.get("tflops") if row else None

    def matmul_rows(self) -> list[Row]:
        return [r for r in self.rows if r.group == "calibration" and r.case.startswith("matmul")]

    def peak_tflops(self, dtype: str) -> float | None:
        """The matmul ceiling of this dtype measured in this run, else the default (first) matmul row's."""
        same = next((r for r in self.matmul_rows() if r.dtype == dtype and r.extra.get("tflops")), None)
        return same.extra["tflops"] if same else self.matmul_tflops


def dtype_label(row: Row) -> str:
    """The row's dtype, with "(TF32 convs)" for float32 rows that ran where cuDNN may use TF32 (CUDA default)."""
    return f"{row.dtype} (TF32 convs)" if row.dtype == "float32" and row.extra.get("tf32_convs") else row.dtype


def _flag(value: Any) -> str:
    return "not recorded" if value is None else "on" if value else "off"


def _shape_str(shape: Any) -> str:
    if isinstance(shape, (list, tuple)):
        return "×".join(str(s) for s in shape)
    return str(shape) if shape is not None else "-"


def _row(bench: dict[str, Any]) -> Row:
    info = dict(bench.get("extra_info") or {})
    params = bench.get("params") or {}
    stats = bench["stats"]
    ms, iqr = info.get("device_ms"), info.get("device_ms_iqr")
    if ms is None:
        ms = stats["median"] * 1e3
        iqr = stats["iqr"] * 1e3 if stats.get("iqr") is not None else None
    name = bench.get("name", "?")
    return Row(
        name=name,
        group=bench.get("group") or "other",
        case=str(info.get("case") or name.split("[")[0].removeprefix("test_bench_").removeprefix("test_")),
        backend=str(info.get("backend") or params.get("backend") or "-"),
        shape=_shape_str(info.get("shape") or params.get("shape")),
        dtype=str(info.get("dtype") or params.get("dtype") or "-").removeprefix("torch."),
        ms=float(ms),
        spread=float(iqr) / float(ms) if iqr is not None and ms else None,
        items=int(info.get("items") or 1),
        extra=info,
    )


def _load_one(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeblurGANError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeblurGANError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise DeblurGANError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def load_results(*paths: str | Path) -> Results:
    """Read one or more pytest-benchmark JSON files of one run (merged); bad files are user errors."""
    if not paths:
        raise DeblurGANError("no results file given")
    rows: list[Row] = []
    datas = []
    for path in map(Path, paths):
        data = _load_one(path)
        try:
            rows += [_row(b) for b in data["benchmarks"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DeblurGANError(f"{path}: malformed benchmark entry ({type(e).__name__}: {e})") from None
        datas.append(data)
    first = next((d for d in datas if (d.get("machine_info") or {}).get("deblurgan")), datas[0])
    machine = first.get("machine_info") or {}
    return Results(
        rows=rows,
        env=machine.get("deblurgan") or {},
        machine=machine,
        commit=first.get("commit_info") or {},
        datetime=min(str(d.get("datetime") or "unknown") for d in datas),
    )


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}" if ms >= 0.01 else f"{ms:.4f}"


def fmt_num(x: float | None) -> str:
    """Rates and percentages: 3 significant figures without exponents."""
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def fmt_x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}×"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _speedup(row: Row, rows: Sequence[Row], backend: str) -> float | None:
    """Baseline ms per item / this row's (>1: this row is faster); same case and shape, same dtype unless the
    group's backend names carry the dtype (inference: eager fp32 vs an fp16 engine is the user's question)."""
    same = [r for r in rows if r.backend == backend and r.case == row.case and r.shape == row.shape]
    base = next((r for r in same if r.dtype == row.dtype), None)
    if base is None and row.group in CROSS_DTYPE_GROUPS and len(same) == 1:
        base = same[0]
    if base is None or row.ms_per_item <= 0:
        return None
    return base.ms_per_item / row.ms_per_item


def _variants(backend: str) -> list[str]:
    """'compile-fp16' -> ['compile']: the prefixes a backend also counts for in "not measured"."""
    parts = backend.split("-")
    return ["-".join(parts[:i]) for i in range(1, len(parts))]


def title(res: Results) -> str:
    env = res.env
    if res.on_gpu:
        return f"# Benchmark report: {env.get('gpu_name', 'unknown GPU')}"
    cpu = env.get("cpu") or res.machine.get("cpu", {}).get("brand_raw") or "CPU"
    return f"# Benchmark report: CPU only ({cpu}, {env.get('cpu_count', '?')} cores)"


def section_env(res: Results) -> list[str]:
    env, commit = res.env, res.commit
    lines = [title(res), ""]
    if not res.on_gpu and env.get("full_size"):
        lines += [
            "> **CPU run at full size** (`DEBLURGAN_BENCH_FULL=1`: 720p models and inference). These are CPU timings:",
            "> they say nothing about GPU speed. On a shared machine other jobs move them, ratios included;",
            "> rows marked ~ were unstable.",
            "",
        ]
    elif not res.on_gpu:
        lines += [
            "> **CPU run with tiny stand-in shapes.** These numbers check that the suite runs; they say nothing",
            "> about GPU speed and must not be compared with GPU reports or with the paper. On a shared machine,",
            "> other jobs change them by several times from one row to the next, ratios included.",
            "",
        ]
    cid = str(commit.get("id") or "unknown")
    ver = cid[:10] + (" (dirty)" if commit.get("dirty") else "")
    if cid in ("unknown", "unversioned") and env.get("commit"):  # a checkout copied without .git
        ver = f"{str(env['commit'])[:10]} (from DEBLURGAN_COMMIT)"
    items = [
        ("date (UTC)", res.datetime),
        ("commit", ver),
        ("device", env.get("device", "unknown")),
        ("GPU", env.get("gpu_name", "none")),
        ("driver", env.get("driver", "-")),
        ("CPU", f"{env.get('cpu', '-')} × {env.get('cpu_count', '?')}"),
        ("torch threads / OMP_WAIT_POLICY", f"{env.get('torch_threads', '?')} / {env.get('omp_wait_policy', '?')}"),
        ("python", env.get("python", res.machine.get("python_version", "-"))),
        ("torch", env.get("torch", "unknown")),
        ("CUDA", env.get("cuda", "-")),
        ("triton", env.get("triton", "unknown")),
        ("onnx", env.get("onnx", "unknown")),
        ("onnxruntime", env.get("onnxruntime", "unknown")),
        ("tensorrt", env.get("tensorrt", "unknown")),
    ]
    if res.on_gpu:  # cuDNN / cuBLAS switches: they decide what "float32" and the conv algorithms were
        flags = " / ".join(_flag(env.get(k)) for k in ("cudnn_benchmark", "cudnn_allow_tf32", "matmul_allow_tf32"))
        items.append(("cudnn.benchmark / TF32 convs / TF32 matmul", flags))
    return lines + _table(["item", "value"], [[k, str(v)] for k, v in items]) + [""]


def section_ceilings(res: Results) -> list[str]:
    lines = ["## Ceilings measured in this run", ""]
    copy, mm = res.calibration("copy"), res.calibration("matmul")
    rows = []
    if copy and copy.extra.get("gbps"):
        size = f"{copy.extra['bytes'] / 2 / 2**20:.0f} MiB" if copy.extra.get("bytes") else copy.shape
        rows.append(["device-to-device copy", size, f"{fmt_num(copy.extra['gbps'])} GB/s (read + write)"])
    for mm in res.matmul_rows():
        if mm.extra.get("tflops"):
            tf = mm.extra["tflops"]
            rate = f"{fmt_num(tf)} TFLOP/s" if res.on_gpu else f"{fmt_num(tf * 1e3)} GFLOP/s"
            rows.append([f"matmul {mm.dtype}", mm.shape, rate])
    if not rows:
        return lines + ["Not measured in this run (no `calibration` benchmarks): % of bandwidth is not shown.", ""]
    return lines + _table(["ceiling", "size", "measured"], rows) + [""]


def _hw(row: Row) -> list[str]:
    return row.shape.split("×")[-2:]


def _model_rows(res: Results) -> list[Row]:
    """Rows of the models suite, plus full-size 720p generator rows of the inference suite (the engine's backends)."""
    rows = [r for r in res.rows if r.extra.get("model")]
    for r in res.group("inference"):
        dup = any(m.backend == r.backend and m.dtype == r.dtype and m.shape == r.shape for m in rows)
        if not r.extra.get("model") and ENGINE_720P.match(r.case) and r.extra.get("full_size") and not dup:
            gflop = r.extra["flop"] / r.items / 1e9 if r.extra.get("flop") else None
            rows.append(Row(**{**r.__dict__, "extra": {**r.extra, "model": "DeblurGAN", "gflop_720p": gflop}}))
    return rows


def _headline(rows: Sequence[Row], peers: Sequence[Row], full: bool) -> list[str]:
    """One sentence per dtype: eager DeblurGAN vs eager DeepDeblur, batch 1, same run (the paper's comparison)."""
    out = []
    for p in peers:
        gans = [r for r in rows if r.extra.get("model") == "DeblurGAN" and r.backend == "eager"]
        g = next((r for r in gans if r.dtype == p.dtype and r.shape == p.shape), None)
        if g is None or g.ms_per_item <= 0:
            continue
        where = "720p frame" if full else f"{'×'.join(_hw(p))} stand-in input, not a 720p frame"
        paper = f"; paper: {PAPER_MS['DeepDeblur'] / PAPER_MS['DeblurGAN']:.1f}×" if full else ""
        out += [
            f"**This run: DeblurGAN is {p.ms_per_item / g.ms_per_item:.2f}× faster than DeepDeblur** (eager"
            f" {dtype_label(g)},"
            f" batch 1, {fmt_ms(g.ms_per_item)} vs {fmt_ms(p.ms_per_item)} ms per {where}){paper}.",
            "",
        ]
    return out or ["No eager DeblurGAN / DeepDeblur pair in this run.", ""]


def section_models(res: Results) -> list[str]:
    rows = _model_rows(res)
    lines = ["## DeblurGAN vs DeepDeblur (paper Table 1, runtime column)", ""]
    if not rows:
        return lines + ["Not measured in this run (no benchmark with a `model`).", ""]
    peers = [p for p in rows if p.extra.get("model") == "DeepDeblur" and p.backend == "eager"]
    body = []
    for r in rows:
        peer = next((p for p in peers if p.dtype == r.dtype and _hw(p) == _hw(r)), None)
        ratio = peer.ms_per_item / r.ms_per_item if peer and r.ms_per_item > 0 else None
        gflop = r.extra.get("gflop_720p")
        params = r.extra.get("params")
        batch = r.shape.split("×")[0] if "×" in r.shape else "?"
        body.append(
            [
                f"{r.extra['model']} ({r.backend}, {dtype_label(r)}, b{batch})",
                f"{params / 1e6:.2f} M" if params else "-",
                f"{gflop:.0f}" if gflop else "-",
                r.shape,
                ("~" if r.noisy else "") + fmt_ms(r.ms_per_item),
                fmt_x(ratio),
                fmt_num(r.extra["tflops"]) if r.extra.get("tflops") else "-",
            ]
        )
    full = all(r.extra.get("full_size", r.shape.endswith("720×1280")) for r in rows)
    lines += _headline(rows, peers, full)
    lines += _table(
        ["method", "params", "GFLOP / 720p frame", "input", "ms / frame", "speed-up vs DeepDeblur", "TFLOP/s"], body
    )
    lines += [
        "",
        "GFLOP = 2 × multiply-accumulates (torch.utils.flop_counter), counted for one 3×720×1280 frame; a transposed",
        "conv counts its useful work (input pixels × kernel). Speed-up = DeepDeblur eager ms / method ms per frame,",
        "same run, same dtype and input size. Rows other than eager are the engine's backends (inference suite).",
        "~ marks unstable timings (interquartile range > 25 % of the median).",
        f"The paper reports {PAPER_MS['DeblurGAN'] / 1e3:.2f} s (DeblurGAN) vs {PAPER_MS['DeepDeblur'] / 1e3:.2f} s "
        f"(DeepDeblur) per GoPro frame on a Titan X, {PAPER_MS['DeepDeblur'] / PAPER_MS['DeblurGAN']:.1f}× (context "
        "only: other hardware, other frameworks).",
    ]
    if any(dtype_label(r) != r.dtype for r in rows):
        lines += ["float32 (TF32 convs): cuDNN was allowed to run these float32 convolutions in TF32 (CUDA default)."]
    if not full:
        lines += ["", "**Inputs are tiny stand-ins, not 720p frames: ms / frame here is not a 720p runtime.**"]
    return lines + [""]


def _generic_rows(
    res: Results, rows: Sequence[Row], with_bw: bool, with_tf: bool, baselines: Sequence[str]
) -> list[list[str]]:
    copy = res.copy_gbps
    body = []
    for r in sorted(rows, key=lambda r: (r.case, r.shape, r.dtype, r.backend)):
        gbps, tflops = r.extra.get("gbps"), r.extra.get("tflops")
        peak = res.peak_tflops(r.dtype)
        cells = [r.case, r.shape, dtype_label(r), r.backend, ("~" if r.noisy else "") + fmt_ms(r.ms)]
        if r.items > 1:
            cells[-1] += f" ({fmt_ms(r.ms_per_item)} / item, {1e3 / r.ms_per_item:.4g} items/s)"
        if with_bw:
            cells += [fmt_num(gbps) if gbps else "-", f"{fmt_num(100 * gbps / copy)} %" if gbps and copy else "-"]
        if with_tf:
            rate = fmt_num(tflops if res.on_gpu else tflops * 1e3) if tflops else "-"
            cells += [
                rate,
                f"{fmt_num(100 * tflops / peak)} %" if tflops and peak else "-",
            ]
        cells += [fmt_x(_speedup(r, rows, b)) if r.backend != b else "1.00×" for b in baselines]
        body.append(cells)
    return body


def section_group(res: Results, group: str) -> list[str]:
    rows = res.group(group)
    heading = {"kernels": "Kernels", "inference": "Inference", "train": "Training", "data": "Data"}.get(group, group)
    lines = [f"## {heading}", ""]
    if not rows:
        return lines + [f"Not measured in this run (no `{group}` benchmarks).", ""]
    with_bw = any(r.extra.get("gbps") for r in rows)
    with_tf = any(r.extra.get("tflops") for r in rows)
    header = ["case", "shape", "dtype", "backend", "ms"]
    if with_bw:
        header += ["GB/s", "% of copy BW"]
    if with_tf:
        header += ["TFLOP/s" if res.on_gpu else "GFLOP/s", "% of matmul peak (same dtype)"]
    baselines = BASELINES.get(group, DEFAULT_BASELINES)
    header += [f"vs {b}" for b in baselines]
    lines += _table(header, _generic_rows(res, rows, with_bw, with_tf, baselines))
    expected = EXPECTED.get(f"{group}-cpu" if not res.on_gpu and f"{group}-cpu" in EXPECTED else group, [])
    missing = [b for b in expected if not any(b in (r.backend, *_variants(r.backend)) for r in rows)]
    lines += [
        "",
        "ms = median per call (CUDA events on GPU); ~ = unstable (interquartile range > 25 % of the median).",
        "vs X = X's ms per item / this row's, same case and shape"
        + (" (any dtype: part of the backend)." if group in CROSS_DTYPE_GROUPS else " and dtype."),
    ]
    if any(dtype_label(r) != r.dtype for r in rows):
        lines += ["float32 (TF32 convs): cuDNN may run these float32 convolutions in TF32 (PyTorch's CUDA default)."]
    flushed = [r.extra["l2_flush_bytes"] for r in rows if r.extra.get("l2_flush_bytes")]
    if flushed:
        which = "every row" if len(flushed) == len(rows) else f"{len(flushed)} of {len(rows)} rows"
        lines += [
            f"L2 flushed before every timed call ({max(flushed) / 2**20:.0f} MiB written, outside the timed "
            f"interval) in {which}: those rows are not read from a warm L2."
        ]
    if missing:
        lines += [f"Not measured in this run: {', '.join(missing)}."]
    return lines + [""]


def _photo_layout(e: dict) -> str:
    if e.get("tile_px"):
        return f"{e.get('tiles', '?')} of {e.get('tile_px')} px"
    return "1 window in bands" if e.get("bands") else "untiled"


def section_large_photo(res: Results) -> list[str]:
    """A large photo through `python -m engine.deblur`: peak resident memory and wall time vs one untiled pass."""
    rows = res.group("large-photo")
    lines = ["## Large photo (CPU, default path)", ""]
    if not rows:
        return lines + ["Not measured in this run (no `large-photo` benchmark).", ""]
    body = []
    for r in rows:
        e = r.extra
        hw = e.get("shape") or [0, 0]
        ratio = e.get("ratio_to_untiled")
        body.append(
            [
                f"{hw[1]}×{hw[0]} ({hw[0] * hw[1] / 1e6:.1f} MP)",
                str(e.get("runtime", "torch")),
                r.dtype,
                _photo_layout(e),
                str(e.get("max_memory", "default")),
                f"{e['peak_rss_bytes'] / 1e9:.2f} GB" if e.get("peak_rss_bytes") else "-",
                f"{e['wall_s']:.1f} s" if e.get("wall_s") else "-",
                f"{e['untiled_fp32_estimate_s']:.1f} s" if e.get("untiled_fp32_estimate_s") else "-",
                f"{ratio:.2f}×" if ratio else "-",
            ]
        )
    header = ["photo", "runtime", "precision", "tiles", "--max-memory", "peak RSS", "wall"]
    header += ["untiled torch fp32 pass (est.)", "ratio"]
    lines += _table(header, body)
    lines += [
        "",
        "One run of `python -m engine.deblur PHOTO.jpg` in a child process (JPEG decode, model, encode): peak",
        "resident memory from os.wait4, wall time from the host clock. The untiled fp32 pass is estimated from one",
        "torch fp32 forward at the reference size in the benchmark process, scaled by pixel count. onnx-stats:",
        "`--runtime onnx` on the generator exported by `python -m export.onnx_stats` (exact tiling in ONNX Runtime).",
    ]
    if not all(r.extra.get("full_size") for r in rows):
        lines += ["", "**A small stand-in photo and model: shows that the harness runs, not a 12 MP result.**"]
    return lines + [""]


def render(res: Results) -> str:
    """The whole report as markdown."""
    lines = section_env(res) + section_ceilings(res) + section_models(res)
    others = sorted({r.group for r in res.rows} - set(GROUP_ORDER) - {"calibration", "models"})
    for g in GROUP_ORDER[1:] + others:
        lines += section_large_photo(res) if g == "large-photo" else section_group(res, g)
    if not res.rows:
        lines += ["No benchmark results in this file.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON file(s) of one run (--benchmark-json=...)")
    parser.add_argument("--out", type=Path, help="write the markdown here (default: stdout)")
    args = parser.parse_args(argv)
    text = render(load_results(*args.results))
    if args.out:
        try:
            atomic_write_text(args.out, text)
        except OSError as e:
            raise DeblurGANError(f"cannot write {args.out}: {e.strerror or e}") from None
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
