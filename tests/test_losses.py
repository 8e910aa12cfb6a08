"""Perceptual/WGAN losses, the VGG19 feature extractor and its weight loading, and the gradient penalty."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deblurgan.errors import DeblurGANError
from deblurgan.losses import (
    PerceptualLoss,
    compute_gp,
    critic_loss,
    generator_adv_loss,
    pixel_loss,
    wasserstein_estimate,
)
from deblurgan.networks import Critic, CriticConfig
from deblurgan.vgg import CONV3_3, IMAGENET_MEAN, IMAGENET_STD, VGG19_FILE, load_vgg19_features, vgg19_features
from kernels.gradient_penalty import draw_eps, gradient_penalty_reference

# torchvision vgg19().features: convs at these indices (conv3_3 = 14)
TV_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
TV_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def torchvision_like_state(seed: int = 0) -> dict:
    """A random state dict with exactly torchvision's vgg19 keys and shapes (features + classifier)."""
    g = torch.Generator().manual_seed(seed)
    state, c_in = {}, 3
    for i, c in zip(TV_CONVS, TV_WIDTHS, strict=True):
        state[f"features.{i}.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(c, generator=g) * 0.05
        c_in = c
    for i, (o, n) in zip([0, 3, 6], [(4096, 25088), (4096, 4096), (1000, 4096)], strict=True):
        state[f"classifier.{i}.weight"] = torch.zeros(o, n)
        state[f"classifier.{i}.bias"] = torch.zeros(o)
    return state


def reference_features(state: dict, x: torch.Tensor) -> torch.Tensor:
    """conv1_1 .. conv3_3 (no final ReLU) written out with F.conv2d, independent of nn.Sequential."""
    for i in TV_CONVS[:7]:
        x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)
        if i == 14:
            return x
        x = F.relu(x)
        if i in (2, 7):
            x = F.max_pool2d(x, 2)
    raise AssertionError


def test_vgg19_layout_matches_torchvision() -> None:
    feats = vgg19_features()
    assert len(feats) == 37
    convs = [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv2d)]
    assert convs == TV_CONVS
    assert [feats[i].out_channels for i in convs] == TV_WIDTHS
    assert CONV3_3 == 15 and isinstance(feats[14], torch.nn.Conv2d) and isinstance(feats[15], torch.nn.ReLU)


def test_load_torchvision_state_dict_from_path(tmp_path) -> None:
    state = torchvision_like_state()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    head, source = load_vgg19_features(str(path))
    assert source == str(path) and len(head) == 15
    assert not any(p.requires_grad for p in head.parameters()) and not head.training
    x = torch.randn(2, 3, 24, 20)
    torch.testing.assert_close(head(x), reference_features(state, x), rtol=1e-4, atol=1e-5)


def test_bad_vgg_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(DeblurGANError, match="file not found"):
        load_vgg19_features(str(tmp_path / "missing.pth"))
    state = torchvision_like_state()
    del state["features.14.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(DeblurGANError, match="not a torchvision VGG19"):
        load_vgg19_features(str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DeblurGANError, match="unreadable"):
        load_vgg19_features(str(tmp_path / "junk.pth"))


@pytest.fixture
def no_imagenet(tmp_path, monkeypatch):
    """An empty hub cache and no network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path / "hub"


def test_imagenet_missing_names_both_options(no_imagenet) -> None:
    with pytest.raises(DeblurGANError) as e:
        load_vgg19_features("imagenet")
    msg = str(e.value)
    assert "--vgg-weights PATH" in msg and str(no_imagenet / "checkpoints" / VGG19_FILE) in msg
    assert "\n" not in msg


def test_auto_falls_back_to_random_with_warning(no_imagenet, capsys) -> None:
    head, source = load_vgg19_features("auto")
    assert source == "random" and len(head) == 15
    assert "NOT the paper's loss" in capsys.readouterr().err


@pytest.fixture
def offline_like_torch_hub(tmp_path, monkeypatch):
    """An empty hub cache and the real torch.hub.load_state_dict_from_url (which prints its own 'Downloading:' line)
    whose transfer fails as it does offline."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, *a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub"


def test_missing_imagenet_weights_print_one_line_once(offline_like_torch_hub, capsys) -> None:
    """No 'Downloading: https://...' on a machine without network, and the random-VGG warning once."""
    load_vgg19_features("auto")
    out, err = capsys.readouterr()
    assert out == "", out  # torch.hub writes 'Downloading: ...' to stdout
    assert err.count("\n") == 1 and "Downloading" not in err and "http" not in err, err
    assert err.startswith("warning: ImageNet VGG19 weights not found") and "NOT the paper's loss" in err
    with pytest.raises(DeblurGANError):
        load_vgg19_features("imagenet")
    assert capsys.readouterr().err == ""  # the error itself is the one line (engine.train prints it)
    load_vgg19_features("random")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NOT the paper's loss" in err


def test_hub_cache_is_used(no_imagenet) -> None:
    state = torchvision_like_state(seed=3)
    (no_imagenet / "checkpoints").mkdir(parents=True)
    torch.save(state, no_imagenet / "checkpoints" / VGG19_FILE)
    head, source = load_vgg19_features("imagenet")
    assert source == "imagenet"
    torch.testing.assert_close(head[14].weight, state["features.14.weight"])


@pytest.mark.parametrize("normalize", [False, True])
def test_perceptual_loss_matches_reference(normalize: bool) -> None:
    state = torchvision_like_state(seed=1)
    feats = vgg19_features()
    feats.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("features.")})
    loss_fn = PerceptualLoss(feats[:15].eval().requires_grad_(False), normalize=normalize)
    fake = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    sharp = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = loss_fn(fake, sharp)

    def prep(x):
        if not normalize:
            return x
        m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((x + 1) / 2 - m) / s

    ref = ((reference_features(state, prep(fake)) - reference_features(state, prep(sharp))) ** 2).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_wgan_losses() -> None:
    d_real, d_fake = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    torch.testing.assert_close(critic_loss(d_real, d_fake), d_fake.mean() - d_real.mean())
    torch.testing.assert_close(generator_adv_loss(d_fake), -d_fake.mean())
    torch.testing.assert_close(wasserstein_estimate(d_real, d_fake), d_real.mean() - d_fake.mean())


# --- gradient penalty: both modes against an independent per-sample computation ------------------


def tiny_critic(dtype=torch.float32) -> Critic:
    torch.manual_seed(0)
    c = Critic(CriticConfig(ndf=4, n_layers=2)).to(dtype)
    for p in c.parameters():  # larger than the 0.02 init so the penalty is far from trivial
        torch.nn.init.normal_(p, 0.0, 0.1)
    return c


def independent_gp(critic, real, fake, eps, weight, mode) -> torch.Tensor:
    """Per sample, one at a time, norms written as sqrt(sum(g^2)): no batching, no shared code path."""
    terms = []
    for i in range(real.shape[0]):
        x = (eps[i] * real[i : i + 1] + (1 - eps[i]) * fake[i : i + 1]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        if mode == "sample":
            terms.append(((g.pow(2).sum().sqrt() - 1) ** 2).reshape(1))
        else:
            terms.append(((g.pow(2).sum(dim=1).sqrt() - 1) ** 2).reshape(-1))
    return weight * torch.cat(terms).mean()


@pytest.mark.parametrize("mode", ["sample", "pixel"])
def test_gp_matches_independent_autograd(mode: str) -> None:
    critic = tiny_critic()
    real, fake = torch.rand(3, 3, 20, 20) * 2 - 1, torch.rand(3, 3, 20, 20) * 2 - 1
    eps = draw_eps(3, mode, real.device)
    if mode == "pixel":
        assert torch.all(eps == eps[0])
    else:
        assert len(set(eps.flatten().tolist())) == 3
    gp = gradient_penalty_reference(critic, real, fake, 10.0, mode, eps=eps)
    ref = independent_gp(critic, real, fake, eps, 10.0, mode)
    torch.testing.assert_close(gp, ref, rtol=1e-5, atol=1e-6)  # float32
    assert gp.item() > 1e-3
    # the gradient w.r.t. critic parameters (double backward) agrees too
    params = list(critic.parameters())[:-1]  # the last bias does not change grad_x D, so it gets no gradient
    g1 = torch.autograd.grad(gp, params)
    g2 = torch.autograd.grad(ref, params)
    scale = max(b.abs().max().item() for b in g2)  # biases before InstanceNorm have ~0 (rounding-noise) gradients
    assert scale > 1e-3
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_gp_parameter_gradient_matches_finite_differences() -> None:
    critic = tiny_critic(torch.float64)
    real = torch.rand(2, 3, 12, 12, dtype=torch.float64) * 2 - 1
    fake = torch.rand(2, 3, 12, 12, dtype=torch.float64) * 2 - 1
    eps = draw_eps(2, "sample", real.device, torch.float64)
    w = critic.model[0].weight
    gp = gradient_penalty_reference(critic, real, fake, 10.0, "sample", eps=eps)
    (grad,) = torch.autograd.grad(gp, [w])
    for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (3, 1, 2, 2)]:

        def gp_at(delta: float, idx: tuple = idx) -> float:
            with torch.no_grad():
                w[idx] += delta
            out = gradient_penalty_reference(critic, real, fake, 10.0, "sample", eps=eps).item()
            with torch.no_grad():
                w[idx] -= delta
            return out

        up, down = gp_at(1e-6), gp_at(-1e-6)
        assert grad[idx].item() == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("mode", ["sample", "pixel"])
def test_trainer_gp_hook_matches_reference(mode: str) -> None:
    critic = tiny_critic()
    real, fake = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    torch.manual_seed(5)
    gp = compute_gp(critic, real, fake, 10.0, mode)
    torch.manual_seed(5)
    eps = draw_eps(2, mode, real.device)
    torch.testing.assert_close(gp, independent_gp(critic, real, fake, eps, 10.0, mode), rtol=1e-5, atol=1e-6)


def test_pixel_loss_is_mean_absolute_error() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 3, 9, 7, generator=g) * 2 - 1, torch.rand(2, 3, 9, 7, generator=g) * 2 - 1
    ref = (a.double() - b.double()).abs().sum() / a.numel()
    torch.testing.assert_close(pixel_loss(a, b).double(), ref, rtol=1e-6, atol=1e-7)  # fp32 sum order
    assert pixel_loss(b, b) == 0.0
    assert pixel_loss(a.bfloat16(), b.bfloat16()).dtype == torch.float32
