"""Replay a whole training iteration from a CUDA graph (`--cuda-graph`).

The paper's iteration at batch 1 is hundreds of small kernels (5 critic updates, each with a double backward
for the gradient penalty, then a generator update). A batch-1 fp32 training iteration took 70.8 ms eager and
29.2 ms with plain graph capture (plain-PyTorch reference timings, H200, torch 2.11, 2026-11-26), so launching
them from Python is much of the cost; `bench/test_bench_train.py` (rows engine and engine+graph) times this
project's own step.
`GraphedStep` runs the first `warmup` iterations eagerly on a side stream (cuDNN/cuBLAS handles, Triton
compilation, optimizer state), captures the next one into a `torch.cuda.CUDAGraph` with static input buffers,
and from then on copies each batch into those buffers and replays the graph.

What the step must satisfy (the Trainer sees to it): no host synchronisation inside, optimizers created with
`capturable=True` and tensor learning rates (a float lr would be frozen into the graph, so an LR schedule
would silently stop applying), autocast without its weight cache, one process. Random numbers (dropout, the
GP's interpolation weights) are drawn anew at each replay: PyTorch registers the default CUDA generator with
the graph. A batch of another shape or dtype than the captured one runs eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GraphedStep:
    """Wrap `step(blur, sharp) -> losses` (CUDA tensors in, a CUDA tensor out) for capture and replay."""

    def __init__(self, step: Step, warmup: int = 3) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.step, self.warmup = step, warmup
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: tuple[torch.Tensor, torch.Tensor] | None = None
        self.static_out: torch.Tensor | None = None
        self.replays = 0
        self._warned = False
        self._side = torch.cuda.Stream()

    @staticmethod
    def _signature(t: torch.Tensor) -> tuple:
        return t.shape, t.dtype, t.device, t.stride()

    def _matches(self, blur: torch.Tensor, sharp: torch.Tensor) -> bool:
        assert self.static_in is not None
        return all(self._signature(a) == self._signature(b) for a, b in zip((blur, sharp), self.static_in, strict=True))

    def _side_stream(self, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        """One eager step on the side stream (what capture needs the warm-up iterations to run on)."""
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            out = self.step(blur, sharp)
        torch.cuda.current_stream().wait_stream(self._side)
        return out

    def _capture(self, blur: torch.Tensor, sharp: torch.Tensor) -> None:
        self.static_in = (blur.clone(memory_format=torch.preserve_format),
                          sharp.clone(memory_format=torch.preserve_format))  # fmt: skip
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: a DataLoader pin-memory thread may use CUDA while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static_out = self.step(*self.static_in)
        self.graph = graph

    def __call__(self, blur: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            if self.eager_calls < self.warmup:
                self.eager_calls += 1
                return self._side_stream(blur, sharp)
            self._capture(blur, sharp)
        if not self._matches(blur, sharp):
            if not self._warned:
                warnings.warn(
                    f"CUDA graph captured for batches of shape {tuple(self.static_in[0].shape)}; a batch of shape "
                    f"{tuple(blur.shape)} runs eagerly",
                    stacklevel=2,
                )
                self._warned = True
            return self.step(blur, sharp)
        self.static_in[0].copy_(blur, non_blocking=True)
        self.static_in[1].copy_(sharp, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.static_out.clone()
