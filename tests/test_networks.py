"""The networks match the authors' architecture: sizes, shapes, key layout, init, residual, dropout."""

import pytest
import torch
from torch import nn

from deblurgan import Critic, CriticConfig, Generator, GeneratorConfig, count_parameters


def test_generator_parameter_count_matches_paper_release():
    assert count_parameters(Generator()) == 11_378_179


def test_critic_parameter_count_and_patch_map():
    critic = Critic()
    # 3->64 (k4) + 64->128 + 128->256 + 256->512 + 512->1, all with bias
    expected = sum(ci * co * 16 + co for ci, co in [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)])
    assert count_parameters(critic) == expected
    out = critic(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 1, 35, 35)


@pytest.mark.parametrize("hw", [(32, 32), (36, 44), (64, 20)])
def test_generator_output_shape_and_range(hw):
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(ngf=8, n_blocks=2)).eval()
    x = torch.rand(2, 3, *hw) * 2 - 1
    y = gen(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_global_residual_is_clamped_input_plus_tanh():
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(ngf=8, n_blocks=1)).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    inner = gen.model(x)
    assert torch.allclose(gen(x), torch.clamp(x + inner, -1, 1))
    gen.config.learn_residual = False
    assert torch.allclose(gen(x), inner)


def test_layer_counts_match_the_issue():
    gen, critic = Generator(), Critic()
    norms = [m for m in gen.modules() if isinstance(m, nn.InstanceNorm2d)]
    relus = [m for m in gen.modules() if isinstance(m, nn.ReLU)]
    assert len(norms) == 23 and len(relus) == 14
    assert all(not n.affine and not n.track_running_stats for n in norms)
    assert len([m for m in critic.modules() if isinstance(m, nn.InstanceNorm2d)]) == 3
    assert not any(isinstance(m, nn.Sigmoid) for m in critic.modules())
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in gen.modules()) == 9


def test_state_dict_keys_follow_original_layout():
    keys = set(Generator().state_dict())
    expected = {f"model.{i}.{p}" for i in (1, 4, 7, 19, 22, 26) for p in ("weight", "bias")}
    expected |= {f"model.{i}.conv_block.{j}.{p}" for i in range(10, 19) for j in (1, 6) for p in ("weight", "bias")}
    assert keys == expected
    assert isinstance(Generator().model[19], nn.ConvTranspose2d)


def test_init_is_normal_0_02_with_zero_bias():
    torch.manual_seed(0)
    w = Generator().model[10].conv_block[1]
    assert abs(w.weight.std().item() - 0.02) < 1e-3 and abs(w.weight.mean().item()) < 1e-3
    assert torch.count_nonzero(w.bias) == 0


def test_dropout_active_only_in_train_mode():
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(ngf=8, n_blocks=2))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    gen.eval()
    assert torch.equal(gen(x), gen(x))
    gen.train()
    assert not torch.equal(gen(x), gen(x))


def test_no_dropout_config_keeps_keys():
    a = set(Generator(GeneratorConfig(dropout=0.0)).state_dict())
    assert a == set(Generator().state_dict())


@pytest.mark.parametrize(
    "bad",
    [dict(n_blocks=0), dict(ngf=-1), dict(dropout=1.5), dict(norm="batch"), dict(kernels="cuda")],
)
def test_bad_generator_config_rejected(bad):
    with pytest.raises(ValueError):
        GeneratorConfig(**bad)


def test_bad_critic_config_rejected():
    with pytest.raises(ValueError):
        CriticConfig(n_layers=0)
