"""Training in real processes: SIGKILL at any moment leaves loadable checkpoints and --resume continues; a
2-process gloo torchrun run keeps generator and critic parameters identical across ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deblurgan.checkpoint import load_checkpoint, load_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--vgg-weights", "random", "--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--n-layers-d", "2",
        "--crop", "32", "--critic-updates", "1", "--num-workers", "0", "--no-progress"]  # fmt: skip


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_sigkill_leaves_loadable_checkpoints_and_resume_continues(tmp_path) -> None:
    data = _images(tmp_path / "sharp")
    run = tmp_path / "runs" / "k"
    cmd = [sys.executable, "-m", "engine.train", "--data", f"synthetic:{data}", *TINY, "--save-every", "1",
           "--keep-last", "3", "--epochs-constant", "1000", "--name", "k",
           "--out-dir", str(tmp_path / "runs")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(list((run / "checkpoints").glob("step_*.pt"))) < 3:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.time() < deadline, "no checkpoints after 120 s"
            time.sleep(0.05)
        time.sleep(0.3)  # land somewhere in the middle of a step or a save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    files = sorted((run / "checkpoints").glob("[!.]*.pt"))  # visible files; a killed save leaves a hidden .tmp.pt
    assert len(files) >= 3
    steps = []
    for f in files:  # every visible checkpoint is complete (atomic writes; temp files are hidden .tmp names)
        ckpt = load_checkpoint(f)
        steps.append(ckpt["train_state"]["step"])
        load_generator(f)
    newest = max(steps)
    leftover = run / "checkpoints" / f".step_{newest + 1:08d}.x7k2q9.tmp.pt"  # as a kill during a save leaves it
    leftover.write_bytes(b"half a checkpoint")
    res = subprocess.run(
        [sys.executable, "-m", "engine.train", "--resume", str(run), "--max-steps", str(newest + 2), "--no-progress"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"(step {newest}," in res.stderr
    final = load_checkpoint(run / "checkpoints" / f"step_{newest + 2:08d}.pt")
    assert final["train_state"]["step"] == newest + 2
    assert (run / "metrics.json").is_file() and (run / "samples" / "latest.png").is_file()
    assert not leftover.exists() and not list((run / "checkpoints").glob(".*"))  # killed saves' leftovers removed


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {root!r})
    from engine.config import make_config
    from engine.trainer import Trainer
    from deblurgan.vgg import vgg19_features

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            self.sharp = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
            self.blur = (self.sharp + torch.roll(self.sharp, 1, -1) + torch.roll(self.sharp, -1, -1)) / 3
        def __len__(self):
            return len(self.sharp)
        def __getitem__(self, i):
            return {{"blur": self.blur[i], "sharp": self.sharp[i], "path": str(i)}}

    if os.environ.get("NO_SYNC") == "1":  # negative control: without the explicit all-reduce the critics drift
        import engine.trainer
        engine.trainer.average_gradients = lambda module, world: None
    cfg = make_config("demo", [{{"model": {{"generator": {{"ngf": 8, "n_blocks": 1}},
                                          "critic": {{"ndf": 8, "n_layers": 2}}}},
        "optim": {{"critic_updates": 2}}, "data": {{"crop": 32, "num_workers": 0}}, "max_steps": 3,
        "save_every": 2, "log_every": 1, "ema": 0.9, "name": "ddp"}}])
    torch.manual_seed(0)
    vgg = vgg19_features()[:15].eval().requires_grad_(False)
    out = sys.argv[1]
    tr = Trainer(cfg, os.path.join(out, "run"), Pairs(4), Pairs(1), vgg=vgg, progress=False)
    seen = list(iter(tr.sampler))
    tr.fit()
    state = {{"g." + k: v for k, v in tr.gen.state_dict().items()}}
    state.update({{"d." + k: v for k, v in tr.critic.state_dict().items()}})
    state.update({{"ema." + k: v for k, v in tr.ema.state_dict().items()}})
    torch.save({{"state": state, "seen": seen, "world": tr.world}}, os.path.join(out, f"rank{{tr.rank}}.pt"))
    torch.distributed.destroy_process_group()  # as engine.train does: gloo may abort at exit otherwise
    """
)


def _torchrun(tmp_path: Path, no_sync: bool) -> tuple[dict, dict]:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT)))
    out = tmp_path / ("nosync" if no_sync else "sync")
    out.mkdir()
    env = _env()
    env["NO_SYNC"] = "1" if no_sync else "0"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


@pytest.mark.slow
def test_ddp_two_processes_keep_parameters_identical(tmp_path) -> None:
    r0, r1 = _torchrun(tmp_path, no_sync=False)
    assert r0["world"] == r1["world"] == 2
    assert sorted(r0["seen"] + r1["seen"]) == [0, 1, 2, 3]  # each rank trained on its own half of the data
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert (tmp_path / "sync" / "run" / "checkpoints" / "step_00000003.pt").is_file()  # rank 0 saved
    ckpt = load_checkpoint(tmp_path / "sync" / "run" / "checkpoints" / "step_00000003.pt")
    assert ckpt["train_state"]["world_size"] == 2
    torch.testing.assert_close(ckpt["critic"]["model.0.weight"], r0["state"]["d.model.0.weight"], rtol=0, atol=0)

    # the control: without the critic all-reduce, the critics (fed different data) drift apart
    n0, n1 = _torchrun(tmp_path, no_sync=True)
    assert not torch.equal(n0["state"]["d.model.0.weight"], n1["state"]["d.model.0.weight"])
    assert torch.equal(n0["state"]["g.model.1.weight"], n1["state"]["g.model.1.weight"])  # DDP still syncs G
