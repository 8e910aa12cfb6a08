"""The training sampler: DistributedSampler's shuffling and sharding, resumable mid-epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from deblurgan.data import item_seeds


class ResumableSampler(Sampler[int | tuple[int, int]]):
    """DistributedSampler's shuffling and sharding, plus a start offset so a resumed run skips what it has seen.

    The permutation of epoch e depends only on (seed, e), so every rank and every resume agrees on it. With
    `item_seeds` it yields (index, item_seed) pairs instead of indices (for datasets that `takes_item_seed`):
    the seed of the item at position p of the padded, unsharded epoch is `deblurgan.data.item_seeds(seed, e,
    ...)[p]`, so an item's random crop/flip/blur is the same whichever worker, rank or resumed run loads it.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, item_seeds: bool = False) -> None:
        self.n, self.seed, self.rank, self.world, self.item_seeds = n, seed, rank, world, item_seeds
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.randperm(self.n, generator=g).tolist()
        idx += idx[: self.per_rank * self.world - self.n]  # pad to equal shards, as DistributedSampler does
        keys: list = idx
        if self.item_seeds:  # the seed of a position, before sharding: the same on every rank and world size
            keys = list(zip(idx, item_seeds(self.seed, self.epoch, len(idx)), strict=True))
        return iter(keys[self.rank :: self.world][self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
