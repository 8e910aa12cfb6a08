"""One full training iteration (1 generator forward, `critic_updates` critic steps with GP, 1 generator step with
the VGG loss): eager defaults vs the engine's speed switches, at batch 1 and 16 on CUDA (1 and 2 on CPU); test ids
and rows name the batch and crop that ran, e.g. `test_bench_train_iteration[engine-b2-32px]` on CPU.

CUDA: the paper's model and 256x256 crops; `eager` = PyTorch's defaults (fp32, NCHW, Adam, cudnn.benchmark off);
`engine` = bf16 autocast + channels_last + fused Adam + Triton kernels (kernels="auto") + cudnn.benchmark;
`engine+graph` adds `cuda_graph` (the iteration captured once, then replayed: engine/graphed.py);
`engine+compile` adds torch.compile of the forwards and runs only with BENCH_TRAIN_COMPILE=1 (compiling the full
generator and critic takes longer than bench/gpu_check.sh gives this suite).
CPU: a tiny model and 32x32 crops, `engine` = channels_last only (bf16 and compile do not help there); these
numbers only show that the benchmark runs.
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.timing import device, measure, on_gpu, pick, tf32_convs
from deblurgan.vgg import vgg19_features
from engine.config import make_config
from engine.trainer import Trainer


class _NoData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        raise IndexError  # the benchmark feeds batches itself


def _trainer(tmp_path, settings: str, batch: int) -> Trainer:
    model = pick(cpu={"generator": {"ngf": 8, "n_blocks": 1}, "critic": {"ndf": 8}}, cuda={})
    over: dict = {"model": dict(model), "data": {"batch_size": batch, "crop": CROP}}
    if settings.startswith("engine"):
        over.update(channels_last=True, compile=settings == "engine+compile", cuda_graph=settings == "engine+graph")
        if on_gpu():
            over.update(amp="bf16")
            over["model"]["kernels"] = "auto"
            over["optim"] = {"fused_adam": True}
    else:  # plain PyTorch defaults
        over["optim"] = {"fused_adam": False}
        over["cudnn_benchmark"] = False
    cfg = make_config("paper", [over])
    torch.manual_seed(0)
    vgg = vgg19_features()[:15].eval().requires_grad_(False)  # random weights: the cost is the same
    return Trainer(cfg, tmp_path / "run", _NoData(), vgg=vgg, progress=False)


BATCHES = pick(cpu=(1, 2), cuda=(1, 16))
CROP = pick(cpu=32, cuda=256)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}-{CROP}px")
@pytest.mark.parametrize("settings", ["eager", "engine", "engine+graph", "engine+compile"])
def test_bench_train_iteration(benchmark, tmp_path, settings: str, batch: int) -> None:
    if settings == "engine+graph" and not on_gpu():
        pytest.skip("CUDA graphs need a GPU")
    if settings == "engine+compile" and not (on_gpu() and os.environ.get("BENCH_TRAIN_COMPILE") == "1"):
        pytest.skip("set BENCH_TRAIN_COMPILE=1 on a GPU machine (compilation takes minutes)")
    tr = _trainer(tmp_path, settings, batch)
    crop = tr.cfg.data.crop
    g = torch.Generator().manual_seed(1)
    sharp = (torch.rand(batch, 3, crop, crop, generator=g) * 2 - 1).to(device())
    blur = (sharp + torch.roll(sharp, 1, -1) + torch.roll(sharp, -1, -1)) / 3
    for _ in range(pick(cpu=1, cuda=4)):  # compile / autotune / graph capture outside the timing
        tr.train_step(blur, sharp)
    if on_gpu():
        torch.cuda.synchronize()
    benchmark.group = "train"
    dtype = "bfloat16" if tr.cfg.amp == "bf16" else "float32"
    losses = measure(
        benchmark,
        lambda: tr.train_step(blur, sharp),
        case=f"train iteration b{batch} {crop}px ({tr.cfg.optim.critic_updates} critic + 1 generator step)",
        backend=settings,
        shape=[batch, 3, crop, crop],
        dtype=dtype,
        tf32_convs=tf32_convs(dtype),  # eager fp32 on CUDA: cuDNN may use TF32 (PyTorch's default)
        items=batch,
        rounds=pick(cpu=None, cuda=10),
        warmup=pick(cpu=None, cuda=2),  # 6 cases must fit gpu_check.sh's budget for this suite
        settings={
            "amp": tr.cfg.amp,
            "channels_last": tr.cfg.channels_last,
            "compile": tr.cfg.compile,
            "cuda_graph": tr.cfg.cuda_graph,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "kernels": tr.cfg.model.kernels,
            "fused_adam": tr.cfg.optim.fused_adam and on_gpu(),
        },  # fmt: skip
    )
    assert torch.isfinite(losses).all()  # the timed iterations really trained
    if tr.graphed is not None:  # ... and were replayed from the graph, not run eagerly
        assert tr.graphed.replays >= 10
