"""The generator shipped with the package: used wherever no checkpoint is given."""

from __future__ import annotations

from pathlib import Path

from .errors import DeblurGANError

#: fp16 generator checkpoint (our format), package data; see docs/model.md.
SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "deblurgan.pt"


class NoShippedModel(DeblurGANError):
    """This installation carries no trained weights."""


def shipped_checkpoint() -> Path:
    """Path of the shipped weights, or a one-line NoShippedModel error when there are none."""
    if not SHIPPED_WEIGHTS.is_file():
        raise NoShippedModel(
            "no trained model ships with this version yet: give --checkpoint (a checkpoint of ours or the "
            "authors' latest_net_G.pth); docs/model.md says how to train one"
        )
    return SHIPPED_WEIGHTS


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """`checkpoint` as a Path, or the shipped weights when it is None."""
    return Path(checkpoint) if checkpoint is not None else shipped_checkpoint()
