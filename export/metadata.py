"""What every exported artifact says about itself: the one definition of the `deblurgan.*` metadata keys
and of the input size rule, shared by the ONNX, AOTInductor and TensorRT exporters."""

from __future__ import annotations

import json

import torch

from deblurgan import __version__
from deblurgan.config import config_to_dict
from deblurgan.inference import MIN_SIZE, SIZE_MULTIPLE
from deblurgan.networks import Generator

MAX_SIZE = 16384
PRECISIONS = ("fp32", "fp16", "bf16")
IO_MODES = ("float", "uint8")


def size_rule() -> str:
    """The input size rule in words."""
    return f"H, W multiples of {SIZE_MULTIPLE}, >= {MIN_SIZE}: pad (reflect), then crop"


def artifact_metadata(generator: Generator, io: str = "float", precision: str = "fp32", **extra: str) -> dict[str, str]:
    """The `deblurgan.*` keys an app needs to feed the model correctly; `extra` adds artifact-specific keys."""
    if io == "uint8":
        layout, value_range = "HWC RGB uint8 (one frame)", "[0, 255]"
    else:
        layout, value_range = "NCHW RGB float32", "[-1, 1]"
    meta = {
        "deblurgan.io": io,
        "deblurgan.layout": layout,
        "deblurgan.input_range": value_range,
        "deblurgan.output_range": value_range,
        "deblurgan.precision": precision,
        "deblurgan.size_multiple": str(SIZE_MULTIPLE),
        "deblurgan.min_size": str(MIN_SIZE),
        "deblurgan.size_rule": size_rule(),
        "deblurgan.engine_version": str(__version__),
        "deblurgan.torch_version": str(torch.__version__),
        "deblurgan.generator_config": json.dumps(config_to_dict(generator.config), sort_keys=True),
    }
    meta.update({f"deblurgan.{k}": str(v) for k, v in extra.items()})
    return meta
