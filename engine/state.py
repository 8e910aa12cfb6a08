"""What a run keeps between processes: RNG states, plain learning rates, step checkpoints, CSV logs."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import numpy as np
import torch

from deblurgan.fsutil import atomic_write_text


def plain_lrs(state: dict) -> dict:
    """A copy of an optimizer or LR-scheduler state_dict with tensor learning rates as floats.

    CUDA-graph runs keep learning rates as device tensors; checkpoints hold floats whichever way they were made,
    so a run resumes with or without `--cuda-graph` and on any device.
    """
    f = lambda v: float(v) if isinstance(v, torch.Tensor) else v
    out = dict(state)
    if "param_groups" in out:
        out["param_groups"] = [{k: f(v) if k in ("lr", "initial_lr") else v for k, v in g.items()}
                               for g in out["param_groups"]]  # fmt: skip
    for key in ("base_lrs", "_last_lr"):
        if key in out:
            out[key] = [f(v) for v in out[key]]
    return out


def step_checkpoints(folder: Path) -> list[Path]:
    """The step_N.pt files of a folder, oldest step first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.glob("step_*.pt"):
        try:
            found.append((int(p.stem[5:]), p))
        except ValueError:
            continue
    return [p for _, p in sorted(found)]


def truncate_csv(path: Path, names: list[str], max_step: int) -> None:
    """Keep only complete rows with step <= max_step (a killed run may have logged past its last checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = []
    for r in rows:
        try:
            if None not in r.values() and int(r["step"]) <= max_step:
                keep.append(r)
        except (KeyError, TypeError, ValueError):
            continue
    if len(keep) == len(rows):
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
    w.writeheader()
    w.writerows(keep)
    atomic_write_text(path, buf.getvalue())


def append_csv_row(path: Path, names: list[str], row: dict) -> None:
    """Append one row (with a header when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def rng_state() -> dict:
    """torch, CUDA, numpy and Python RNG states as tensors and plain values (a weights_only checkpoint holds them)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_gauss"][0], state["numpy_gauss"][1]))
    random.setstate((3, tuple(state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
