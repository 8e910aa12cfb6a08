"""ONNX export for exact tiling with ONNX Runtime: the generator cut before every instance-norm layer.

    python -m export.onnx_stats --checkpoint model.pt --out deblurgan-stats/      # a folder of ONNX graphs
    python -m engine.deblur photo.jpg --runtime onnx --model deblurgan-stats/ --out results/

A plain ONNX graph normalises every tile by itself, so tiles differ from the whole image. Here segment k
(k = 0 .. K, K = number of IN layers) takes the state entering it (the activation, plus the input of the
ResBlock it is inside) and, for k > 0, the statistics (per-channel mean and biased variance) of IN layer k-1,
which it applies first, in fp32; it returns the state before IN layer k (the last segment returns the output).
`deblurgan.inference.Deblurrer` runs the segments with the same layer-by-layer whole-image statistics and kept
states as the torch runtime, in bands of rows (the manifest's per-segment `reach` and `scale`), so tiled equals
untiled up to float rounding, with memory bounded by the band and the kept states. The folder holds
`segment_NN.onnx` and `deblurgan_stats.json` (the manifest).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deblurgan.cli import run_cli
from deblurgan.config import config_to_dict
from deblurgan.errors import DeblurGANError, first_line
from deblurgan.networks import Generator
from deblurgan.tiling import (
    frozen_norm,
    generator_program,
    program_geometry,
    receptive_radius,
    spoiled,
    torch_generator,
)

MANIFEST = "deblurgan_stats.json"
FORMAT = "deblurgan-onnx-stats"
OPSET = 17


class Segment(nn.Module):
    """Steps [start, stop) of the generator program; `forward(h, *skips, [mean, var])` -> (h, *skips)."""

    def __init__(self, ops: Sequence[tuple[str, object]], skips_in: int, eps: float | None) -> None:
        super().__init__()
        self.kinds = [kind for kind, _ in ops]
        self.mods = nn.ModuleList([arg for kind, arg in ops if kind == "mod"])  # type: ignore[misc]
        self.skips_in, self.eps = skips_in, eps

    def forward(self, h: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        skips = list(rest[: self.skips_in])
        stats = rest[self.skips_in :]
        mods = iter(self.mods)
        for kind in self.kinds:
            if kind == "norm":
                h = frozen_norm(h, stats[0], stats[1], self.eps)  # type: ignore[arg-type]
            elif kind == "mod":
                h = next(mods)(h)
            elif kind == "push":
                skips.append(h)
            else:
                h = skips.pop() + h
        return (h, *skips)


def segments(gen: Generator) -> list[tuple[Segment, int, int]]:
    """(segment, skips in, skips out) for k = 0 .. K."""
    ops = generator_program(torch_generator(gen).eval())
    norm_at = [i for i, (kind, _) in enumerate(ops) if kind == "norm"]
    bounds = [0, *norm_at, len(ops)]
    out, depth = [], 0
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = ops[a:b]
        eps = part[0][1][1] if part and part[0][0] == "norm" else None  # type: ignore[index]
        d_in = depth
        depth += sum(kind == "push" for kind, _ in part) - sum(kind == "add" for kind, _ in part)
        out.append((Segment(part, d_in, eps).eval(), d_in, depth))
    return out


def segment_geometry(gen: Generator) -> tuple[list[int], list[int]]:
    """Per segment boundary the state's downsampling factor, and per segment its reach (input px spoiled next to
    a cut): what lets `deblurgan.tiling.ExactTiles` run each pass in bands of rows."""
    ops = generator_program(torch_generator(gen).eval())
    scale, reach = program_geometry(ops)
    bounds = [0, *[i for i, (kind, _) in enumerate(ops) if kind == "norm"], len(ops)]
    return [scale[b] for b in bounds], [spoiled(scale, reach, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def export_stats(gen: Generator, out: str | os.PathLike) -> Path:
    """Write the segment graphs and the manifest to the folder `out` (replaced whole, atomically renamed)."""
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise DeblurGANError(f"--out {out} exists and is not a folder written by export.onnx_stats")
    gen = gen.eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        manifest: dict = {
            "format": FORMAT,
            "version": 1,
            "receptive_radius": receptive_radius(gen),
            "learn_residual": bool(gen.config.learn_residual),
            "generator_config": config_to_dict(gen.config),
            "segments": [],
        }
        manifest["scale"], manifest["reach"] = segment_geometry(gen)
        h = torch.rand(1, gen.config.in_channels, 16, 16) * 2 - 1
        state: tuple[torch.Tensor, ...] = (h,)
        for k, (seg, d_in, d_out) in enumerate(segments(gen)):
            args = list(state)
            names = ["h", *[f"skip{i}" for i in range(d_in)]]
            if seg.eps is not None:
                c = state[0].shape[1]
                args += [torch.zeros(c), torch.ones(c)]
                names += ["mean", "var"]
            outs = ["h_out", *[f"skip{i}_out" for i in range(d_out)]]
            axes = {n: {0: "n", 2: f"{n}_h", 3: f"{n}_w"} for n in names[: 1 + d_in]}
            axes.update({n: {0: "n", 2: f"{n}_h", 3: f"{n}_w"} for n in outs})
            buf = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    seg, tuple(args), buf, dynamo=False, input_names=names, output_names=outs,
                    dynamic_axes=axes, opset_version=OPSET,
                )  # fmt: skip
            name = f"segment_{k:02d}.onnx"
            (tmp / name).write_bytes(buf.getvalue())
            with torch.no_grad():
                state = seg(*args)
            manifest["segments"].append({"file": name, "skips_in": d_in, "skips_out": d_out, "norm": seg.eps})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_stats_model(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


class _Program:
    """The segments as steps for deblurgan.inference's exact tiling (step k+1 starts with IN layer k)."""

    def __init__(self, runner: OnnxStatsRunner) -> None:
        self.runner = runner
        self.n_steps = len(runner.sessions)
        self.norm_at = list(range(1, self.n_steps))
        self.scale: list[int] | None = runner.manifest.get("scale")  # absent in older exports: whole windows
        self.reach: list[int] | None = runner.manifest.get("reach")

    def run(self, state, start: int, stop: int, stats) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        h, skips = state
        for k in range(start, stop):
            h, skips = self.runner.run_segment(k, h, skips, stats[k - 1] if k > 0 else None)
        return h, skips


class OnnxStatsRunner:
    """ONNX Runtime over the segments of `export.onnx_stats`: exact per-image IN, exact tiling in the Deblurrer."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.device = torch.device(device)
        if self.device.type != "cpu":
            raise DeblurGANError("exact-tiling ONNX models (export.onnx_stats) run on cpu here")
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
            if self.manifest.get("format") != FORMAT:
                raise ValueError(f"format {self.manifest.get('format')!r}")
            options = ort.SessionOptions()
            options.enable_cpu_mem_arena = False  # freed blocks go back: peak memory follows the window size
            self.sessions = [
                ort.InferenceSession(str(self.path / s["file"]), options, providers=["CPUExecutionProvider"])
                for s in self.manifest["segments"]
            ]
        except Exception as e:  # missing files, bad JSON, graphs onnxruntime cannot load
            raise DeblurGANError(f"{self.path}: not a loadable export.onnx_stats model ({first_line(e)})") from None
        self.receptive_radius = int(self.manifest["receptive_radius"])
        self.learn_residual = bool(self.manifest["learn_residual"])
        self.dtype = torch.float32
        self.max_batch: int | None = None
        self.precision = "fp32"
        self.name = "onnx-stats"

    def program(self) -> _Program:
        return _Program(self)

    def run_segment(self, k: int, h: torch.Tensor, skips: tuple, stats) -> tuple[torch.Tensor, tuple]:
        session = self.sessions[k]
        feed = {"h": _np(h), **{f"skip{i}": _np(s) for i, s in enumerate(skips)}}
        if stats is not None:
            feed["mean"], feed["var"] = _np(stats[0]), _np(stats[1])
        outs = [torch.from_numpy(o) for o in session.run(None, feed)]
        return outs[0], tuple(outs[1:])

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Untiled: each image's own IN statistics, computed between the segments."""
        from deblurgan.inference import check_input

        check_input(x, self)
        outs = []
        for image in x.float().cpu().split(1):
            h, skips = image, ()
            stats = None
            for k in range(len(self.sessions)):
                h, skips = self.run_segment(k, h, skips, stats)
                if k + 1 < len(self.sessions):
                    a = h.double()
                    stats = (a.mean((0, 2, 3)).float(), a.var((0, 2, 3), unbiased=False).float())
            outs.append(torch.clamp(image + h, -1.0, 1.0) if self.learn_residual else h)
        return torch.cat(outs).to(x.device)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.onnx_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="generator checkpoint (default: the shipped model)")
    p.add_argument("--out", required=True, help="output folder (segment graphs + manifest)")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator even if the checkpoint has EMA")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    from deblurgan.checkpoint import load_generator
    from deblurgan.pretrained import resolve_checkpoint

    args = build_parser().parse_args(argv)
    gen = load_generator(resolve_checkpoint(args.checkpoint), kernels="torch", use_ema=not args.no_ema)
    out = export_stats(gen, args.out)
    print(f"wrote {out} ({len(list(out.glob('segment_*.onnx')))} segments)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
