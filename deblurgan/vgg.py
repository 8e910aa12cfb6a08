"""VGG19 `features` with torchvision-compatible keys (torchvision itself is not a dependency).

The perceptual loss uses `features[:15]`: VGG19 up to conv3_3, before its ReLU, as in the authors' code (the
paper's text describes features after activation; the issue and this engine follow the code).
`load_vgg19_features` loads a torchvision state dict (`features.N.weight`) strictly, from a file, the torch hub
cache or the official download URL.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import torch
from torch import nn

from .errors import DeblurGANError

# torchvision's cfg "E": numbers are conv widths, "M" a 2x2 max-pool.
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M") + (
    512, 512, 512, 512, "M") * 2  # fmt: skip
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FILE = "vgg19-dcbb9e9d.pth"
NOT_FOUND = "ImageNet VGG19 weights not found"
CONV3_3 = 15  # features[:15] ends with conv3_3 (index 14), before its ReLU
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """The full torchvision `vgg19().features` layout (37 modules, conv+ReLU, max-pools)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(c_in, int(v), kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            c_in = int(v)
    return nn.Sequential(*layers)


def hub_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _load_features_state(state: dict, where: str) -> nn.Sequential:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DeblurGANError(f"{where}: not a VGG19 state dict")
    feats = {k[len("features.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    model = vgg19_features()
    own = model.state_dict()
    missing = sorted(set(own) - set(feats))
    unexpected = sorted(set(feats) - set(own))
    if missing or unexpected:
        raise DeblurGANError(
            f"{where}: not a torchvision VGG19 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, v in own.items():
        if not torch.is_tensor(feats[k]) or tuple(feats[k].shape) != tuple(v.shape):
            raise DeblurGANError(f"{where}: features.{k} has the wrong shape for VGG19")
    model.load_state_dict({k: v.float() for k, v in feats.items()}, strict=True)
    return model


def _read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DeblurGANError(f"{path}: unreadable VGG19 weights ({type(e).__name__})") from None


def load_vgg19_features(weights: str = "imagenet", download: bool = True) -> tuple[nn.Sequential, str]:
    """`features[:15]` in eval mode, frozen, and a word saying where the weights came from.

    weights: a file path (torchvision-format state dict), "imagenet" (hub cache, else download; a clear
    error if neither works), "auto" (like imagenet but falls back to random with a warning) or "random".
    """
    if weights == "random":
        model, source = vgg19_features(), "random"
        print("warning: --vgg-weights random: the perceptual loss is NOT the paper's loss", file=sys.stderr)
    elif weights in ("imagenet", "auto"):
        try:
            model, source = _imagenet(download), "imagenet"
        except DeblurGANError as e:
            if weights == "imagenet":
                raise
            reason = str(e).split(":", 1)[0] if str(e).startswith(NOT_FOUND) else str(e)
            print(f"warning: {reason}: using random VGG19 features, so the perceptual loss is NOT the paper's loss "
                  f"(--vgg-weights PATH uses a file)", file=sys.stderr)  # fmt: skip
            model, source = vgg19_features(), "random"
    else:
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise DeblurGANError(f"--vgg-weights {weights}: file not found")
        model, source = _load_features_state(_read(path), str(path)), str(path)
    head = model[:CONV3_3]
    head.eval().requires_grad_(False)
    return head, source


def _imagenet(download: bool) -> nn.Sequential:
    """The hub cache first; else one quiet download attempt (torch.hub prints 'Downloading: ...' itself)."""
    cached = hub_cache_path()
    if cached.is_file():
        return _load_features_state(_read(cached), str(cached))
    if download:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                state = torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", progress=False)
            model = _load_features_state(state, VGG19_URL)
            print(f"downloaded the ImageNet VGG19 weights to {cached}", file=sys.stderr)
            return model
        except DeblurGANError:
            raise
        except Exception:
            pass
    raise DeblurGANError(
        f"{NOT_FOUND} ({cached} is missing and the download failed): pass --vgg-weights PATH "
        f"(a torchvision vgg19 state dict), or put {VGG19_FILE} in {cached.parent}"
    )
