"""The training loop as a library: schedule, learning, resume, divergence, checkpoints and run-folder outputs.

Tiny configs (ngf 8, one ResBlock, 32x32 crops, random VGG) keep each test to a few seconds on a 2-core CPU.
"""

from __future__ import annotations

import copy
import csv
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deblurgan.checkpoint import atomic_save, load_checkpoint, load_generator
from deblurgan.data import build_dataset
from deblurgan.errors import DeblurGANError
from deblurgan.metrics import psnr, ssim, to_uint8
from deblurgan.vgg import vgg19_features
from engine.config import make_config
from engine.sampler import ResumableSampler
from engine.samples import LABEL_HEIGHT, labeled_row
from engine.state import plain_lrs
from engine.trainer import Trainer, TrainingDiverged, lr_factor, lr_schedule_values


class TinyPairs(torch.utils.data.Dataset):
    """Random sharp images and a horizontally box-blurred copy, in [-1, 1]."""

    def __init__(self, n: int = 4, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.sharp = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.blur = sum(torch.roll(self.sharp, s, dims=-1) for s in (-2, -1, 0, 1, 2)) / 5

    def __len__(self) -> int:
        return len(self.sharp)

    def __getitem__(self, i: int) -> dict:
        return {"blur": self.blur[i], "sharp": self.sharp[i], "path": f"img{i}.png"}


@pytest.fixture(scope="module")
def vgg() -> torch.nn.Module:
    torch.manual_seed(0)
    return vgg19_features()[:15].eval().requires_grad_(False)


def tiny_cfg(**over):
    base = {
        "model": {"generator": {"ngf": 8, "n_blocks": 1}, "critic": {"ndf": 8, "n_layers": 2}},
        "loss": {"vgg_weights": "random"},
        "optim": {"epochs_constant": 2, "epochs_decay": 2, "critic_updates": 2},
        "data": {"crop": 32, "num_workers": 0},
        "save_every": 2,
        "log_every": 1,
        "samples": 2,
    }
    for k, v in over.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)
        else:
            base[k] = v
    return make_config("demo", [base])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_lr_schedule_paper_values(vgg, tmp_path) -> None:
    cfg = make_config("paper", [{"model": {"ngf": 8, "n_blocks": 1, "ndf": 8}, "loss": {"vgg_weights": "random"}}])
    assert lr_schedule_values(cfg, [0, 149, 150, 225, 299, 300]) == pytest.approx(
        [1e-4, 1e-4, 1e-4, 5e-5, 1e-4 / 150, 0.0]
    )
    assert lr_factor(5, 0, 0) == 0.0
    # the schedulers the trainer steps once per epoch give the same values
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    seen = {}
    for epoch in range(301):
        seen[epoch] = (tr.opt_g.param_groups[0]["lr"], tr.opt_d.param_groups[0]["lr"])
        tr.sched_g.step()
        tr.sched_d.step()
    for epoch, lr in [(0, 1e-4), (150, 1e-4), (225, 5e-5), (300, 0.0)]:
        assert seen[epoch] == pytest.approx((lr, lr), abs=1e-12)
    assert tr.opt_g.param_groups[0]["betas"] == (0.5, 0.999) and cfg.optim.critic_updates == 5


def test_steps_reduce_generator_loss_on_fixed_batch(vgg, tmp_path) -> None:
    cfg = tiny_cfg(model={"dropout": 0.0}, optim={"lr": 1e-3, "critic_updates": 1})
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    data = TinyPairs(2, seed=1)
    blur, sharp = data.blur, data.sharp
    losses = [tr.train_step(blur, sharp) for _ in range(25)]
    content = [float(v[3]) for v in losses]  # the perceptual term of L_G
    assert all(torch.isfinite(v).all() for v in losses)
    assert np.mean(content[-5:]) < 0.7 * content[0], content
    # the critic's loss (mostly GP at the start: its input gradients are ~0 at init) goes down too
    assert np.mean([float(v[0]) for v in losses[-5:]]) < 0.5 * float(losses[0][0])


@pytest.mark.parametrize("weights", [(1.0, 100.0, 0.0), (0.1, 0.0, 30.0), (0.5, 20.0, 7.0)])
def test_generator_loss_weights(vgg, tmp_path, weights) -> None:
    """loss_g = adv_weight * adv + content_weight * perceptual + pixel_weight * L1, recomputed independently."""
    adv_w, content_w, pixel_w = weights
    cfg = tiny_cfg(model={"dropout": 0.0}, loss={"adv_weight": adv_w, "content_weight": content_w,
                                                 "pixel_weight": pixel_w}, optim={"critic_updates": 1})  # fmt: skip
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    data = TinyPairs(2, seed=1)
    gen0 = copy.deepcopy(tr.gen)
    out = tr.train_step(data.blur, data.sharp)
    with torch.no_grad():  # the fake the step used (no dropout) and the critic as it was for the generator step
        fake = gen0(data.blur)
        adv = -tr.critic(fake).mean()
        content = ((vgg(fake) - vgg(data.sharp)) ** 2).mean() if content_w else torch.tensor(0.0)
        pixel = (fake - data.sharp).abs().mean() if pixel_w else torch.tensor(0.0)
    torch.testing.assert_close(out[2:4], torch.stack([adv, content]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out[6], pixel, rtol=1e-4, atol=1e-6)
    total = adv_w * adv + content_w * content + pixel_w * pixel
    torch.testing.assert_close(out[1], total, rtol=1e-4, atol=1e-5)
    assert (float(pixel) > 0) == (pixel_w > 0) and (float(content) > 0) == (content_w > 0)


def test_zero_init_last_starts_as_identity_and_learns(vgg, tmp_path) -> None:
    data = TinyPairs(2, seed=1)
    plain = Trainer(tiny_cfg(model={"zero_init_last": False}), tmp_path / "a", TinyPairs(2), vgg=vgg, progress=False)
    assert (plain.gen.eval()(data.blur) - data.blur).abs().max() > 0.05  # the paper's init: a random residual
    cfg = tiny_cfg(model={"zero_init_last": True, "dropout": 0.0}, loss={"pixel_weight": 100.0},
                   optim={"critic_updates": 1, "lr": 1e-3})  # fmt: skip
    tr = Trainer(cfg, tmp_path / "b", TinyPairs(2), vgg=vgg, progress=False)
    torch.testing.assert_close(tr.gen(data.blur), data.blur, rtol=0, atol=0)  # blur is in (-1, 1): no clamping
    pix = [float(tr.train_step(data.blur, data.sharp)[6]) for _ in range(25)]
    assert np.mean(pix[-5:]) < 0.9 * pix[0], pix  # the zero conv gets gradients: it does not stay the identity


def test_pixel_loss_alone_fits_a_fixed_batch(vgg, tmp_path) -> None:
    cfg = tiny_cfg(model={"dropout": 0.0}, loss={"adv_weight": 0.0, "content_weight": 0.0, "pixel_weight": 1.0},
                   optim={"lr": 1e-3, "critic_updates": 1})  # fmt: skip
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    data = TinyPairs(2, seed=1)
    pix = [float(tr.train_step(data.blur, data.sharp)[6]) for _ in range(25)]
    assert np.mean(pix[-5:]) < 0.7 * pix[0], pix


@pytest.mark.parametrize("n, world", [(7, 1), (7, 2), (8, 3)])
def test_sampler_matches_distributed_sampler_and_resumes(n: int, world: int) -> None:
    from torch.utils.data import DistributedSampler

    for rank in range(world):
        for epoch in (0, 3):
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=11)
            ref.set_epoch(epoch)
            ours = ResumableSampler(n, seed=11, rank=rank, world=world)
            ours.set_position(epoch, 0)
            assert list(ours) == list(ref) and len(ours) == len(ref)
            ours.set_position(epoch, 2)
            assert list(ours) == list(ref)[2:] and len(ours) == len(ref) - 2


@pytest.mark.parametrize("n, world", [(7, 1), (7, 2), (8, 3)])
def test_sampler_item_seeds_keep_the_sharding_and_depend_on_position_only(n: int, world: int) -> None:
    from torch.utils.data import DistributedSampler

    by_epoch = {}
    for epoch in (0, 3):
        seeds = {}  # position in the padded, unsharded epoch -> item seed
        for rank in range(world):
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=11)
            ref.set_epoch(epoch)
            ours = ResumableSampler(n, seed=11, rank=rank, world=world, item_seeds=True)
            ours.set_position(epoch, 0)
            pairs = list(ours)
            assert [i for i, _ in pairs] == list(ref) and len(ours) == len(ref)  # same sharding and padding
            ours.set_position(epoch, 2)
            assert list(ours) == pairs[2:] and len(ours) == len(ref) - 2  # a resume sees the same seeds
            seeds.update({rank + world * k: s for k, (_, s) in enumerate(pairs)})
        assert len(set(seeds.values())) == len(seeds)  # padded duplicates get their own seed too
        single = ResumableSampler(n, seed=11, item_seeds=True)  # one process: the same seed at each position
        single.set_position(epoch, 0)
        assert [s for _, s in single] == [seeds[p] for p in range(n)]
        by_epoch[epoch] = set(seeds.values())
    assert by_epoch[0].isdisjoint(by_epoch[3])


def _state(tr: Trainer) -> dict:
    out = {f"g.{k}": v.clone() for k, v in tr.gen.state_dict().items()}
    out.update({f"d.{k}": v.clone() for k, v in tr.critic.state_dict().items()})
    if tr.ema is not None:
        out.update({f"ema.{k}": v.clone() for k, v in tr.ema.state_dict().items()})
    for name, opt in (("og", tr.opt_g), ("od", tr.opt_d)):
        for i, s in opt.state_dict()["state"].items():
            out.update({f"{name}.{i}.{k}": v.clone() for k, v in s.items()})
    return out


def test_resume_continues_with_identical_state(vgg, tmp_path) -> None:
    # dropout, GP eps and the data order all draw random numbers: resume must restore them exactly
    cfg = tiny_cfg(max_steps=7, ema=0.9, save_every=3)
    full = Trainer(cfg, tmp_path / "full", TinyPairs(3), TinyPairs(1, seed=9), vgg=vgg, progress=False)
    full.fit()

    cut = tiny_cfg(max_steps=4, ema=0.9, save_every=3)  # stops mid-epoch 1 (3 steps per epoch)
    first = Trainer(cut, tmp_path / "cut", TinyPairs(3), TinyPairs(1, seed=9), vgg=vgg, progress=False)
    first.fit()
    assert (first.step, first.epoch, first.batch_in_epoch) == (4, 1, 1)
    del first
    torch.manual_seed(1234)  # a fresh process would have a different RNG state
    again = Trainer(cfg, tmp_path / "cut", TinyPairs(3), TinyPairs(1, seed=9), vgg=vgg, resume=True, progress=False)
    assert (again.step, again.epoch, again.batch_in_epoch) == (4, 1, 1)
    again.fit()
    assert again.step == full.step == 7 and again.epoch == full.epoch
    a, b = _state(full), _state(again)
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert again.sched_g.state_dict() == full.sched_g.state_dict()
    # the logs are continuous: one row per step, no duplicates from the resumed part
    with open(tmp_path / "cut" / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 8))
    # resuming a finished run changes nothing
    metrics = (tmp_path / "cut" / "metrics.json").read_text()
    done = Trainer(cfg, tmp_path / "cut", TinyPairs(3), TinyPairs(1, seed=9), vgg=vgg, resume=True, progress=False)
    assert done.fit()["step"] == 7 and (tmp_path / "cut" / "metrics.json").read_text() == metrics


def test_run_folder_outputs_and_checkpoint_format(vgg, tmp_path) -> None:
    cfg = tiny_cfg(ema=0.5, keep_last=2)
    run = tmp_path / "run"
    tr = Trainer(cfg, run, TinyPairs(4), TinyPairs(2, seed=5), vgg=vgg, progress=False)
    summary = tr.fit()
    assert tr.step == 16 and tr.epoch == 4
    steps = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert steps == ["step_00000014.pt", "step_00000016.pt"]  # keep_last=2
    assert (run / "checkpoints" / "best.pt").is_file()
    ckpt = load_checkpoint(run / "checkpoints" / "step_00000016.pt")
    assert ckpt["train_state"]["step"] == 16 and ckpt["config"]["ema"] == 0.5
    gen = load_generator(run / "checkpoints" / "step_00000016.pt")  # inference prefers the EMA weights
    for k, v in gen.state_dict().items():
        torch.testing.assert_close(v, ckpt["ema"][k], rtol=0, atol=0)
    assert not torch.equal(ckpt["ema"]["model.1.weight"], ckpt["generator"]["model.1.weight"])
    grid = np.asarray(Image.open(run / "samples" / "latest.png"))
    assert grid.shape == (2 * (LABEL_HEIGHT + 32), 3 * 32, 3)  # rows: label strip + sample; columns: 3 images
    for r in range(2):  # each row under its labels: blurred | restored | sharp
        top = r * (LABEL_HEIGHT + 32)
        assert grid[top : top + LABEL_HEIGHT].max() > 128  # text drawn in each strip
        sharp = to_uint8(TinyPairs(2, seed=5)[r]["sharp"])
        assert np.array_equal(grid[top + LABEL_HEIGHT : top + LABEL_HEIGHT + 32, 64:96], sharp)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 16 and metrics["val"]["weights"] == "ema"
    # the logged validation scores are the restored (EMA) and blurred images' scores, recomputed independently
    val_set, restored, baseline = TinyPairs(2, seed=5), [], []
    with torch.no_grad():
        for i in range(len(val_set)):
            item = val_set[i]
            out = gen(item["blur"].unsqueeze(0))[0]
            sharp, blurred = to_uint8(item["sharp"]), to_uint8(item["blur"])
            restored.append((psnr(to_uint8(out), sharp), ssim(to_uint8(out), sharp)))
            baseline.append((psnr(blurred, sharp), ssim(blurred, sharp)))
    val = metrics["val"]
    assert val["psnr"] == pytest.approx(np.mean([r[0] for r in restored]), abs=1e-6)
    assert val["ssim"] == pytest.approx(np.mean([r[1] for r in restored]), abs=1e-6)
    assert val["psnr_input"] == pytest.approx(np.mean([b[0] for b in baseline]), abs=1e-6)
    assert val["ssim_input"] == pytest.approx(np.mean([b[1] for b in baseline]), abs=1e-6)
    assert val["psnr"] != val["psnr_input"]
    assert metrics == json.loads(json.dumps(summary))
    with open(run / "val_log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and float(rows[0]["lr"]) == pytest.approx(1e-4) and float(rows[-1]["lr"]) < 1e-4
    assert all(float(r["it_per_s"]) > 0 and float(r["gp"]) >= 0 for r in rows)


def test_existing_run_needs_resume(vgg, tmp_path) -> None:
    Trainer(tiny_cfg(max_steps=2), tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False).fit()
    with pytest.raises(DeblurGANError, match="--resume"):
        Trainer(tiny_cfg(max_steps=2), tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    with pytest.raises(DeblurGANError, match="no checkpoints"):
        Trainer(tiny_cfg(), tmp_path / "other", TinyPairs(2), vgg=vgg, resume=True, progress=False)


def test_triton_kernels_on_cpu_is_a_clear_error(vgg, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(DeblurGANError, match="needs a CUDA device"):
        Trainer(tiny_cfg(model={"kernels": "triton"}), tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    tr = Trainer(tiny_cfg(model={"kernels": "auto"}), tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    assert tr.kernels == "torch" and tr.checkpoint()["generator_config"]["kernels"] == "torch"  # saved resolved
    assert not (tmp_path / "run").exists()


class PoisonAfter(TinyPairs):
    """Returns NaN images from the `after`-th item read on (a diverging run, reproducibly)."""

    def __init__(self, after: int) -> None:
        super().__init__(4)
        self.after, self.reads = after, 0

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        item = super().__getitem__(i)
        if self.reads > self.after:
            item = dict(item, sharp=torch.full_like(item["sharp"], float("nan")))
        return item


def test_non_finite_loss_stops_and_names_last_good_checkpoint(vgg, tmp_path) -> None:
    tr = Trainer(tiny_cfg(), tmp_path / "run", PoisonAfter(3), vgg=vgg, progress=False)
    with pytest.raises(TrainingDiverged) as e:
        tr.fit()
    msg = str(e.value)
    good = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    assert "non-finite loss at step 4" in msg and str(good) in msg and "\n" not in msg
    assert not (tmp_path / "run" / "checkpoints" / "step_00000004.pt").exists()
    ckpt = load_checkpoint(good)
    assert all(torch.isfinite(v).all() for v in ckpt["generator"].values())


@pytest.mark.parametrize("switch", [{"channels_last": True}, {"amp": "bf16"}])
def test_speed_switches_match_eager_on_cpu(vgg, tmp_path, switch) -> None:
    """channels_last must not change the maths; bf16 autocast stays close to float32 for one step."""
    data = TinyPairs(1, seed=2)
    out = []
    for i, extra in enumerate([{}, switch]):
        cfg = tiny_cfg(model={"dropout": 0.0}, optim={"critic_updates": 1}, **extra)
        tr = Trainer(cfg, tmp_path / f"r{i}", TinyPairs(1), vgg=vgg, progress=False)
        if extra.get("channels_last"):  # the switch must take effect, not only leave the maths alone
            conv = tr.gen.model[1].weight
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        torch.manual_seed(0)
        losses = tr.train_step(data.blur, data.sharp)
        out.append(losses)
    # (after one Adam step, near-zero gradients of biases before InstanceNorm flip sign with rounding, so weights
    # are not compared; the losses cover the forward, the GP double backward and the perceptual term)
    tol = (
        {"rtol": 1e-4, "atol": 1e-6} if "channels_last" in switch else {"rtol": 0.06, "atol": 1e-3}
    )  # bf16: 8-bit mantissa
    idx = [0, 3, 4, 5]  # critic loss, content loss, GP, Wasserstein estimate
    assert out[0][0] > 1.0  # a large GP at init: not a trivially small number
    torch.testing.assert_close(out[1][idx], out[0][idx], **tol)
    if "amp" in switch:  # bf16 really ran: rounding moves the losses
        assert not torch.equal(out[1][idx], out[0][idx])


@pytest.mark.slow  # torch.compile: ~35 s on 2 cores with a cold cache
def test_compile_matches_eager(vgg, tmp_path) -> None:
    data = TinyPairs(1, seed=2)
    out = []
    for i, comp in enumerate([False, True]):
        cfg = tiny_cfg(model={"dropout": 0.0}, optim={"critic_updates": 2}, compile=comp)
        tr = Trainer(cfg, tmp_path / f"r{i}", TinyPairs(1), vgg=vgg, progress=False)
        torch.manual_seed(0)
        out.append(torch.stack([tr.train_step(data.blur, data.sharp) for _ in range(2)]))
    # loss_g_adv (column 2) is a mean of critic scores that nearly cancel (~4e-3): compiled CPU kernels sum in
    # another order (with 2 OpenMP threads it moved by 3e-4), so it gets an absolute bound; the rest agree to 1e-4
    torch.testing.assert_close(out[1][:, 2], out[0][:, 2], rtol=0, atol=1e-3)
    others = [0, 1, 3, 4, 5, 6]
    torch.testing.assert_close(out[1][:, others], out[0][:, others], rtol=1e-4, atol=1e-5)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by bench/gpu_check.sh)")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(
    "switch, tol",
    [
        ({"channels_last": True}, 1e-3),  # TF32/cuDNN algorithm choices differ between layouts
        ({"amp": "bf16", "channels_last": True, "model": {"generator": {"dropout": 0.0}, "kernels": "auto"}}, 0.06),
    ],
)
def test_cuda_engine_switches_match_eager(vgg, tmp_path, switch, tol, full_fp32) -> None:
    data = TinyPairs(2, size=64, seed=2)
    out = []
    for i, extra in enumerate([{}, switch]):
        extra = dict(extra)
        model = {"dropout": 0.0, **extra.pop("model", {})}
        cfg = tiny_cfg(model=model, optim={"critic_updates": 1}, device="cuda", data={"crop": 64}, **extra)
        tr = Trainer(cfg, tmp_path / f"r{i}", TinyPairs(2, size=64), vgg=vgg, progress=False)
        assert tr.opt_g.defaults.get("fused") is True  # fused Adam on CUDA
        # the switches take effect: NHWC weights, Triton kernels for 'auto' on CUDA
        assert tr.gen.model[1].weight.is_contiguous(memory_format=torch.channels_last) == bool(i)
        assert tr.kernels == ("triton" if model.get("kernels") == "auto" else "torch")
        torch.manual_seed(0)
        out.append(tr.train_step(data.blur, data.sharp).cpu())
    idx = [0, 3, 4, 5]
    torch.testing.assert_close(out[1][idx], out[0][idx], rtol=tol, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_cuda_fit_with_all_switches_leaves_loadable_checkpoint(vgg, tmp_path) -> None:
    cfg = tiny_cfg(device="cuda", amp="bf16", channels_last=True, ema=0.9, max_steps=4, model={"kernels": "auto"})
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(4), TinyPairs(1, seed=3), vgg=vgg, progress=False)
    assert torch.backends.cudnn.benchmark is True  # the default on CUDA
    summary = tr.fit()
    assert summary["step"] == 4 and summary["val"]["psnr"] > 0
    gen = load_generator(tmp_path / "run" / "checkpoints" / "step_00000004.pt")
    assert all(torch.isfinite(v).all() for v in gen.state_dict().values())


# --- --cuda-graph (engine/graphed.py) ----------------------------------------------------------------------------
# CPU: the errors, and the optimizer bookkeeping that makes checkpoints interchangeable between graph and eager runs
# (tensor learning rates saved as floats, the resuming run's fused/capturable flags restored after loading).
# GPU: replay agrees with eager, replays train, the LR schedule still applies, random numbers are fresh at each
# replay, and a graph run resumes an eager checkpoint.
def _tb_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_tensorboard_logs_and_resume_hides_what_the_interrupted_run_logged(vgg, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    Trainer(tiny_cfg(max_steps=4, save_every=2), run, TinyPairs(2), TinyPairs(1, seed=9), vgg=vgg, progress=False).fit()
    assert _tb_steps(run, "train/loss_d") == [1, 2, 3, 4] and _tb_steps(run, "val/psnr")
    (run / "checkpoints" / "step_00000004.pt").unlink()  # as if killed after logging step 4, before saving it
    # event files are read in name order, and names start with the creation second: a real resume comes later
    # than the run it continues, so make sure this one does too (same-second names sort by a process counter)
    time.sleep(1.05)
    cfg = tiny_cfg(max_steps=6, save_every=2)
    Trainer(cfg, run, TinyPairs(2), TinyPairs(1, seed=9), vgg=vgg, resume=True, progress=False).fit()
    assert _tb_steps(run, "train/loss_d") == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 once, from the resumed run


def test_cudnn_benchmark_switch_leaves_cpu_runs_alone(vgg, tmp_path) -> None:
    before = torch.backends.cudnn.benchmark
    for value in (True, False):
        tr = Trainer(tiny_cfg(cudnn_benchmark=value), tmp_path / f"r{value}", TinyPairs(2), vgg=vgg, progress=False)
        assert tr.cfg.cudnn_benchmark is value and torch.backends.cudnn.benchmark is before


def test_cuda_graph_without_cuda_is_a_clear_error(vgg, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeblurGANError, match="--cuda-graph needs a CUDA device"):
        Trainer(tiny_cfg(cuda_graph=True), tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    assert not (tmp_path / "run").exists()


def test_plain_lrs_turns_tensor_learning_rates_into_floats_without_touching_the_live_state() -> None:
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=torch.tensor(2e-4))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
    sched.step()
    for state in (opt.state_dict(), sched.state_dict()):
        plain = plain_lrs(state)
        flat = [*plain.get("base_lrs", []), *plain.get("_last_lr", [])]
        flat += [g[k] for g in plain.get("param_groups", []) for k in ("lr", "initial_lr")]
        assert flat and all(type(v) is float for v in flat)
    assert plain_lrs(opt.state_dict())["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and isinstance(sched.base_lrs[0], torch.Tensor)


def test_resume_uses_this_runs_optimizer_flags_not_the_checkpoints(vgg, tmp_path) -> None:
    """A checkpoint written by a CUDA-graph run (capturable Adam, tensor lr) resumes in an eager CPU run."""
    cfg = tiny_cfg(max_steps=2, save_every=2)
    Trainer(cfg, tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False).fit()
    path = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    ckpt = load_checkpoint(path)
    for key in ("opt_g", "opt_d"):
        assert all(type(g["lr"]) is float for g in ckpt["train_state"][key]["param_groups"])
        for g in ckpt["train_state"][key]["param_groups"]:  # what a graph run on a GPU would have had live
            g.update(capturable=True, lr=torch.tensor(g["lr"]))
    atomic_save(ckpt, path)
    tr = Trainer(tiny_cfg(max_steps=3), tmp_path / "run", TinyPairs(2), vgg=vgg, resume=True, progress=False)
    for opt in (tr.opt_g, tr.opt_d):
        assert all(g["capturable"] is False and type(g["lr"]) is float for g in opt.param_groups)
    before = [p.detach().clone() for p in tr.gen.parameters()]
    tr.fit()  # capturable Adam with CPU parameters would raise here
    assert tr.step == 3 and any(not torch.equal(a, b) for a, b in zip(before, tr.gen.parameters(), strict=True))


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1) for p in module.parameters()])


def _weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1) for p in module.parameters() if p.dim() > 1])


@pytest.mark.gpu
@cuda
def test_cuda_graph_replay_matches_eager(vgg, tmp_path, full_fp32) -> None:
    # no dropout and no GP: nothing random, so eager and replayed iterations do the same arithmetic
    data = TinyPairs(6, size=64, seed=2)
    deltas, losses = [], []
    for i, graph in enumerate([False, True]):
        cfg = tiny_cfg(device="cuda", cuda_graph=graph, model={"dropout": 0.0}, loss={"gp_weight": 0.0},
                       data={"crop": 64})  # fmt: skip
        tr = Trainer(cfg, tmp_path / f"r{i}", data, vgg=vgg, progress=False)
        start = _weights(tr.gen)
        losses.append(torch.stack([tr.train_step(data.blur[k : k + 2], data.sharp[k : k + 2]) for k in range(5)]))
        deltas.append(_weights(tr.gen) - start)
        if graph:
            assert tr.graphed.replays == 2  # 3 eager warm-up iterations, then capture + 2 replays
    torch.testing.assert_close(losses[1].cpu(), losses[0].cpu(), rtol=1e-3, atol=1e-5)
    # weights only: the biases of convolutions followed by instance norm have a zero gradient in exact arithmetic,
    # so their updates are Adam-amplified rounding noise (non-deterministic cuDNN / reflection-pad backward) and
    # differ between any two runs, graph or not
    assert deltas[0].norm() > 0
    assert (deltas[1] - deltas[0]).norm() / deltas[0].norm() < 1e-3


@pytest.mark.gpu
@pytest.mark.slow  # compiles the Triton kernels (bf16, channels_last): gpu_check.sh runs it after the benchmarks
@cuda
def test_cuda_graph_replays_follow_the_lr_schedule_and_draw_fresh_random_numbers(vgg, tmp_path) -> None:
    # the paper's randomness (dropout 0.5, GP eps); lr factor 1, 0.5, 0 over epochs 0, 1, 2
    model, optim = {"dropout": 0.5, "kernels": "auto"}, {"epochs_constant": 0, "epochs_decay": 2}
    cfg = tiny_cfg(device="cuda", cuda_graph=True, amp="bf16", channels_last=True, data={"crop": 64}, model=model,
                   optim=optim)  # fmt: skip
    data = TinyPairs(2, size=64, seed=4)
    tr = Trainer(cfg, tmp_path / "run", data, vgg=vgg, progress=False)
    for _ in range(4):  # 3 eager + capture and first replay
        tr.train_step(data.blur, data.sharp)
    assert tr.graphed.replays == 1
    w0 = _params(tr.gen)
    tr.train_step(data.blur, data.sharp)
    assert not torch.equal(_params(tr.gen), w0)  # a replay trains
    for sched in (tr.sched_g, tr.sched_d):
        sched.step()
        sched.step()
    assert float(tr.opt_g.param_groups[0]["lr"]) == 0.0 and isinstance(tr.opt_g.param_groups[0]["lr"], torch.Tensor)
    w1, c1 = _params(tr.gen), _params(tr.critic)
    a = tr.train_step(data.blur, data.sharp)
    b = tr.train_step(data.blur, data.sharp)
    assert torch.equal(_params(tr.gen), w1) and torch.equal(_params(tr.critic), c1)  # lr 0 reached the graph
    # same weights, same batch: new dropout masks and GP eps move the losses far beyond GPU rounding
    assert torch.isfinite(a).all() and (a[1] - b[1]).abs() > 1e-3 * a[1].abs()
    assert tr.graphed.replays == 4


@pytest.mark.gpu
@cuda
def test_cuda_graph_run_resumes_an_eager_checkpoint_and_writes_a_plain_one(vgg, tmp_path) -> None:
    data = TinyPairs(4, size=64, seed=5)
    eager = tiny_cfg(device="cuda", max_steps=2, save_every=2, data={"crop": 64})
    Trainer(eager, tmp_path / "run", data, vgg=vgg, progress=False).fit()
    graph = tiny_cfg(device="cuda", cuda_graph=True, max_steps=8, save_every=4, data={"crop": 64})
    tr = Trainer(graph, tmp_path / "run", data, TinyPairs(1, size=64, seed=6), vgg=vgg, resume=True, progress=False)
    assert all(g["capturable"] is True for g in tr.opt_g.param_groups)
    summary = tr.fit()
    assert summary["step"] == 8 and tr.graphed.replays >= 2
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000008.pt")
    assert all(type(g["lr"]) is float for g in ckpt["train_state"]["opt_g"]["param_groups"])
    assert all(torch.isfinite(v).all() for v in ckpt["generator"].values())


@pytest.fixture
def random_items(tmp_path):
    """A synthetic-blur training set on three small images: every item draws a crop, a flip and a blur kernel."""
    rng = np.random.default_rng(3)
    (tmp_path / "sharp").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((40, 44, 3)) * 255).astype(np.uint8)).save(tmp_path / "sharp" / f"{i}.png")
    return lambda: build_dataset(f"synthetic:{tmp_path / 'sharp'}", "train", crop=32, seed=0, blur_max_len=6)


def test_resume_with_dataloader_workers_is_bit_identical(vgg, tmp_path, random_items) -> None:
    # two workers: after the resume the remaining items of the epoch land on other workers than in the full run;
    # their crops, flips and kernels must not depend on that
    cfg = tiny_cfg(max_steps=5, save_every=3, data={"num_workers": 2})
    full = Trainer(cfg, tmp_path / "full", random_items(), vgg=vgg, progress=False)
    assert full.sampler.item_seeds  # the engine's datasets get their randomness from the sampler
    plain = Trainer(tiny_cfg(), tmp_path / "plain", TinyPairs(3), vgg=vgg, progress=False)
    assert not plain.sampler.item_seeds  # a dataset that takes no item seeds gets plain indices
    full.fit()
    cut = tiny_cfg(max_steps=4, save_every=3, data={"num_workers": 2})  # stops mid-epoch 1 (3 steps per epoch)
    first = Trainer(cut, tmp_path / "cut", random_items(), vgg=vgg, progress=False)
    first.fit()
    assert (first.step, first.epoch, first.batch_in_epoch) == (4, 1, 1)
    del first
    torch.manual_seed(1234)
    again = Trainer(cfg, tmp_path / "cut", random_items(), vgg=vgg, resume=True, progress=False)
    again.fit()
    assert again.step == full.step == 5
    a, b = _state(full), _state(again)
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sample_rows_are_labelled_with_each_images_psnr() -> None:
    """The label strip names the columns and gives the row's PSNRs: other numbers draw other pixels."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    row = labeled_row(*imgs, psnr_in=21.5, psnr_out=23.25)
    assert row.shape == (LABEL_HEIGHT + 40, 180, 3)
    assert np.array_equal(row[LABEL_HEIGHT:], np.concatenate(imgs, axis=1))
    strip = row[:LABEL_HEIGHT]
    for col in range(3):  # text in each column's part of the strip
        assert strip[:, col * 60 : (col + 1) * 60].max() > 128
    other = labeled_row(*imgs, psnr_in=21.5, psnr_out=31.75)[:LABEL_HEIGHT]
    assert np.array_equal(other[:, :60], strip[:, :60]) and not np.array_equal(other[:, 60:120], strip[:, 60:120])
    from PIL import ImageDraw, ImageFont

    probe = Image.new("RGB", (180, LABEL_HEIGHT))
    ImageDraw.Draw(probe).text((3, 1), "blurred 21.50 dB", fill=(255, 255, 255), font=ImageFont.load_default())
    assert np.array_equal(np.asarray(probe)[:, :60], strip[:, :60])  # the words are the column's name and PSNR


def test_time_limit_stops_saves_and_resume_continues(vgg, tmp_path, monkeypatch) -> None:
    cfg = tiny_cfg(time_limit_s=0.5, save_every=100)
    clock = iter(range(0, 10**6))  # each perf_counter() call advances one second
    monkeypatch.setattr("engine.trainer.time.perf_counter", lambda: float(next(clock)))
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(4), TinyPairs(1, seed=9), vgg=vgg, progress=False)
    summary = tr.fit()
    assert 1 <= tr.step < 16 and summary["stopped_by_time_limit"] is True  # stopped long before 4 epochs x 4
    ckpt = tmp_path / "run" / "checkpoints" / f"step_{tr.step:08d}.pt"
    assert ckpt.is_file() and summary["val"] is not None and summary["last_checkpoint"] == str(ckpt)
    stopped_at = tr.step
    monkeypatch.undo()
    done = Trainer(tiny_cfg(), tmp_path / "run", TinyPairs(4), TinyPairs(1, seed=9), vgg=vgg, resume=True,
                   progress=False)  # fmt: skip
    assert done.step == stopped_at
    assert done.fit()["stopped_by_time_limit"] is False and done.step == 16


def test_kernels_are_resolved_once_for_the_device_and_saved_resolved(vgg, tmp_path, monkeypatch) -> None:
    """A run with kernels 'auto' on CPU saves 'torch': its checkpoint never builds Triton modules for a CPU run."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = tiny_cfg(max_steps=1, device="cpu", model={"kernels": "auto"})
    tr = Trainer(cfg, tmp_path / "run", TinyPairs(2), vgg=vgg, progress=False)
    assert tr.kernels == "torch" and tr.gen.config.kernels == "torch" and tr.critic_config.kernels == "torch"
    tr.fit()
    ckpt = load_checkpoint(tr.last_checkpoint)
    assert ckpt["generator_config"]["kernels"] == "torch" and ckpt["critic_config"]["kernels"] == "torch"
    assert ckpt["config"]["model"]["kernels"] == "auto"  # the run's own setting stays as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine, loading for a CPU run
    gen = load_generator(tr.last_checkpoint)
    assert gen.config.kernels == "torch"
    assert not any("InstanceNormAct" in type(m).__name__ for m in gen.modules())


def test_one_definition_of_the_network_settings() -> None:
    """ModelConfig holds the networks' own configs instead of repeating their fields; old flat keys still load."""
    import dataclasses

    from deblurgan.config import CriticConfig, GeneratorConfig
    from engine.config import ModelConfig

    own = {f.name for f in dataclasses.fields(ModelConfig)}
    assert not own & ({f.name for f in dataclasses.fields(GeneratorConfig)} - {"kernels"})
    assert not own & ({f.name for f in dataclasses.fields(CriticConfig)} - {"kernels"})
    cfg = make_config("paper")
    assert isinstance(cfg.model.generator, GeneratorConfig) and isinstance(cfg.model.critic, CriticConfig)
    old = make_config("paper", [{"model": {"ngf": 8, "n_blocks": 2, "dropout": 0.1, "learn_residual": False,
                                           "ndf": 16, "n_layers_d": 2, "kernels": "auto"}}])  # fmt: skip
    g, c = old.model.generator, old.model.critic
    assert (g.ngf, g.n_blocks, g.dropout, g.learn_residual, c.ndf, c.n_layers) == (8, 2, 0.1, False, 16, 2)
    assert old.model.kernels == "auto"
