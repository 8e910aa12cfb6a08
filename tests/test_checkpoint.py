"""Checkpoints: our format round-trips, the authors' release loads, bad files fail loudly, writes are atomic."""

import os
import re

import pytest
import torch

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import (
    FORMAT,
    atomic_save,
    load_checkpoint,
    load_generator,
    load_state_dict_strict,
    make_checkpoint,
    save_generator,
)
from deblurgan.errors import CheckpointError

SMALL = GeneratorConfig(ngf=8, n_blocks=2)


def _random_gen(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    gen = Generator(cfg)
    with torch.no_grad():  # not the init distribution: a swapped or skipped tensor must show
        for p in gen.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return gen.eval()


def _x(hw=(24, 28)):
    torch.manual_seed(1)
    return torch.rand(1, 3, *hw) * 2 - 1


def _original_layout(gen):
    """What an old PyTorch DataParallel run of the authors' code saved: `module.` prefix, stale IN buffers."""
    sd = {f"module.{k}": v.clone() for k, v in gen.state_dict().items()}
    for idx, ch in ((2, 8), (5, 16), (8, 32)):
        sd[f"module.model.{idx}.running_mean"] = torch.randn(ch)
        sd[f"module.model.{idx}.running_var"] = torch.rand(ch)
    sd["module.model.10.conv_block.2.running_mean"] = torch.randn(32)
    return sd


def test_roundtrip_our_format(tmp_path):
    gen = _random_gen()
    path = save_generator(gen, tmp_path / "g.pt")
    loaded = load_generator(path)
    assert loaded.config == gen.config
    assert not loaded.training
    assert torch.equal(loaded(_x()), gen(_x()))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and "torch" in raw["versions"]


def test_ema_weights_preferred(tmp_path):
    gen, ema = _random_gen(seed=0), _random_gen(seed=1)
    path = save_generator(gen, tmp_path / "g.pt", ema=ema.state_dict())
    assert torch.equal(load_generator(path)(_x()), ema(_x()))
    assert torch.equal(load_generator(path, use_ema=False)(_x()), gen(_x()))


def test_original_release_layout_loads_identically(tmp_path):
    gen = _random_gen(GeneratorConfig(ngf=8, n_blocks=2))
    torch.save(_original_layout(gen), tmp_path / "latest_net_G.pth")
    loaded = load_generator(tmp_path / "latest_net_G.pth")
    # --ngf and --n_blocks of the authors' options are read off the weights
    assert loaded.config.n_blocks == 2 and loaded.config.ngf == 8 and loaded.config.learn_residual
    assert torch.equal(loaded(_x()), gen(_x()))


def test_original_full_size_release_loads(tmp_path):
    gen = _random_gen(GeneratorConfig())
    torch.save(_original_layout(gen), tmp_path / "latest_net_G.pth")
    loaded = load_generator(tmp_path / "latest_net_G.pth")
    assert torch.equal(loaded(_x((16, 16))), gen(_x((16, 16))))


def test_original_no_dropout_layout(tmp_path):
    gen = _random_gen(GeneratorConfig(ngf=8, n_blocks=1, dropout=0.0))
    sd = {k.replace(".conv_block.6.", ".conv_block.5."): v for k, v in gen.state_dict().items()}
    torch.save(sd, tmp_path / "g.pth")
    loaded = load_generator(tmp_path / "g.pth")
    assert loaded.config.dropout == 0.0
    assert torch.equal(loaded(_x()), gen(_x()))


def test_kernels_override_keeps_weights(tmp_path):
    path = save_generator(_random_gen(), tmp_path / "g.pt")
    loaded = load_generator(path, kernels="torch")
    assert loaded.config.kernels == "torch"
    assert torch.equal(loaded(_x()), _random_gen()(_x()))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda sd: sd.pop("model.1.weight"), r"1 missing, e\.g\. \['model\.1\.weight'\]; 0 unexpected"),
        (lambda sd: sd.__setitem__("model.99.weight", torch.randn(3)), "unexpected"),
        (lambda sd: sd.__setitem__("model.1.weight", torch.randn(8, 3, 3, 3)), "shape"),
    ],
)
def test_partial_or_wrong_state_dict_is_an_error(tmp_path, mutate, match):
    sd = dict(_random_gen().state_dict())
    mutate(sd)
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(CheckpointError, match=match):
        load_generator(tmp_path / "g.pth")


def test_our_format_with_wrong_weights_is_an_error(tmp_path):
    ckpt = make_checkpoint(_random_gen())
    key = sorted(ckpt["generator"])[-1]
    ckpt["generator"].pop(key)
    torch.save(ckpt, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"1 missing, e.g. ['{key}']")) as info:
        load_generator(tmp_path / "g.pt")
    assert str(tmp_path / "g.pt") in str(info.value) and "\n" not in str(info.value)


def test_strict_loading_names_missing_keys():
    """A state dict lacking keys (nothing unexpected) fails through the one-line CheckpointError naming them."""
    gen = _random_gen()
    state = dict(gen.state_dict())
    missing = [k for k in state if k.endswith(".bias")][:2]
    for k in missing:
        del state[k]
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(_random_gen(seed=1), state, "where.pt")
    msg = str(info.value)
    assert msg.startswith("where.pt: weights do not match the model") and "\n" not in msg
    assert f"{len(missing)} missing" in msg and all(repr(k) in msg for k in missing) and "0 unexpected" in msg


def test_full_size_model_refuses_small_weights(tmp_path):
    ckpt = make_checkpoint(_random_gen())
    ckpt["generator_config"]["ngf"] = 64
    torch.save(ckpt, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="shape"):
        load_generator(tmp_path / "g.pt")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", b"PK\x03\x04garbage", os.urandom(2048)],
    ids=["empty", "text", "bad-zip", "random-bytes"],
)
def test_corrupt_files_give_checkpoint_error(tmp_path, content):
    p = tmp_path / "g.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="g.pt"):
        load_generator(p)


def test_truncated_checkpoint(tmp_path):
    path = save_generator(_random_gen(), tmp_path / "g.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_generator(path)


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "nope.pt")
    torch.save(torch.randn(3), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="dict"):
        load_checkpoint(tmp_path / "t.pt")
    torch.save({"foo": 1}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="not a DeblurGAN checkpoint"):
        load_generator(tmp_path / "d.pt")


def test_newer_format_version_refused(tmp_path):
    ckpt = make_checkpoint(_random_gen())
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_generator(tmp_path / "g.pt")


def test_unknown_config_key_refused(tmp_path):
    ckpt = make_checkpoint(_random_gen())
    ckpt["generator_config"]["n_blokcs"] = 3
    torch.save(ckpt, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="n_blokcs"):
        load_generator(tmp_path / "g.pt")


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"generator": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_generator(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.parametrize("saved", ["triton", "auto"])
def test_a_checkpoint_trained_with_triton_kernels_loads_for_a_cpu_run(saved, tmp_path):
    """GPU runs save kernels='triton'; on a CPU the same weights load with the plain-PyTorch layers, same output."""
    from deblurgan.checkpoint import make_checkpoint

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1))
    ckpt = make_checkpoint(g)
    ckpt["generator_config"]["kernels"] = saved
    torch.save(ckpt, tmp_path / "g.pt")
    loaded = load_generator(tmp_path / "g.pt")
    assert loaded.config.kernels == "torch"
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), g.eval()(x))
    assert load_generator(tmp_path / "g.pt", kernels="triton").config.kernels == "triton"  # asked for: kept
