"""The shipped model still deblurs: it beats the blurred input on small crops of the evaluation set (CPU).

The check (`assert_beats_input`) is shown to fail, through the same code path, for an identity and for a random
generator saved as the shipped weights are (fp16, our checkpoint format).
"""

from __future__ import annotations

import pytest
import torch

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import atomic_save, make_checkpoint
from deblurgan.pretrained import SHIPPED_WEIGHTS
from engine.evalset import crops_check
from engine.trainer import zero_last_conv

MARGIN_DB = 0.2  # mean PSNR gain over the blurred crops that counts as beating them (an identity scores 0)


def assert_beats_input(checkpoint) -> None:
    pytest.importorskip("sklearn", reason="the evaluation photos come with scikit-learn (pip install -e .[dev])")
    pytest.importorskip("matplotlib", reason="the evaluation photos come with matplotlib (pip install -e .[dev])")
    r = crops_check(checkpoint)
    assert r["crops"] >= 6
    assert r["psnr"] > r["blur_psnr"] + MARGIN_DB, (
        f"{checkpoint}: restored {r['psnr']:.2f} dB vs blurred {r['blur_psnr']:.2f} dB on {r['crops']} crops"
    )


@pytest.mark.skipif(not SHIPPED_WEIGHTS.is_file(), reason="no trained weights ship yet (docs/model.md)")
def test_shipped_model_beats_the_blurred_input():
    assert_beats_input(SHIPPED_WEIGHTS)


def _planted(tmp_path, identity: bool):
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig())  # the paper's generator, N(0, 0.02) init
    if identity:
        zero_last_conv(gen)  # with the global residual: output = input
    ckpt = make_checkpoint(gen)
    ckpt["generator"] = {k: v.half() for k, v in ckpt["generator"].items()}  # as engine.ship writes them
    return atomic_save(ckpt, tmp_path / "deblurgan.pt")


@pytest.mark.parametrize("identity", [True, False], ids=["identity", "random"])
def test_the_check_fails_for_a_model_that_does_not_deblur(tmp_path, identity):
    with pytest.raises(AssertionError, match="restored"):
        assert_beats_input(_planted(tmp_path, identity))


def test_the_weights_are_package_data():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert "weights/*.pt" in meta["tool"]["setuptools"]["package-data"]["deblurgan"]
    assert SHIPPED_WEIGHTS.parent == root / "deblurgan" / "weights" and SHIPPED_WEIGHTS.suffix == ".pt"
