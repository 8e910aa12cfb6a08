"""Exponential moving average of the generator's weights."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Exponential moving average of generator weights (float copy, updated after each generator step)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]
        self.model = model

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.params, [p.detach() for p in self.model.parameters()], 1.0 - self.decay)

    def state_dict(self) -> dict:
        names = [n for n, _ in self.model.named_parameters()]
        return {n: p.detach().cpu().clone() for n, p in zip(names, self.params, strict=True)}

    def load_state_dict(self, state: dict) -> None:
        for (n, _), p in zip(self.model.named_parameters(), self.params, strict=True):
            p.copy_(state[n])
