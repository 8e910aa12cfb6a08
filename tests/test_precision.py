"""deblurgan.precision.exact_fp32: TF32 off inside the block, the caller's settings back afterwards."""

from __future__ import annotations

import pytest
import torch

from deblurgan.precision import exact_fp32


@pytest.mark.parametrize("before", [True, False])
def test_exact_fp32_turns_tf32_off_and_restores(before: bool) -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before, not before
        with exact_fp32():
            assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is before and torch.backends.cuda.matmul.allow_tf32 is (not before)
        with pytest.raises(RuntimeError), exact_fp32():
            raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32 is before  # restored on errors too
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_full_fp32_fixture(full_fp32) -> None:
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
