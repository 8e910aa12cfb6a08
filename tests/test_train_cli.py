"""Training config (presets, YAML, overrides, type checks) and the CLI's errors: all before any work starts."""

from __future__ import annotations

import pytest
import torch
import yaml

from deblurgan.errors import DeblurGANError
from engine.config import make_config, parse_overrides, recipe_deviations, resolve_key, to_dict
from engine.train import load_datasets, main


def test_paper_preset_is_the_papers_recipe() -> None:
    cfg = make_config("paper")
    assert (cfg.loss.content_weight, cfg.loss.gp_weight, cfg.loss.gp_norm) == (100.0, 10.0, "sample")
    assert (cfg.loss.adv_weight, cfg.loss.pixel_weight) == (1.0, 0.0)  # L_G = -mean D + 100 * perceptual only
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.critic_updates) == (1e-4, 0.5, 0.999, 5)
    assert (cfg.optim.epochs_constant, cfg.optim.epochs_decay) == (150, 150)
    assert (cfg.data.batch_size, cfg.data.crop) == (1, 256)
    assert (cfg.model.ngf, cfg.model.n_blocks, cfg.model.dropout) == (64, 9, 0.5)
    assert cfg.loss.vgg_weights == "imagenet" and cfg.loss.vgg_normalize is False
    demo = make_config("demo")
    assert demo.loss.vgg_weights == "auto" and demo.data.crop < 256


def test_recipe_deviations_name_what_differs_from_the_paper() -> None:
    assert recipe_deviations(make_config("paper")) == []
    cfg = make_config("paper", [{"optim": {"lr": 2e-4}, "loss": {"pixel_weight": 5}, "model": {"ngf": 8}}])
    assert recipe_deviations(cfg) == ["loss.pixel_weight 5 (paper: 0)", "optim.lr 0.0002 (paper: 0.0001)"]
    demo = recipe_deviations(make_config("demo"))
    assert demo and all("(paper: " in d for d in demo)  # the demo's changes are named (and printed at start)
    mild = make_config("paper", [{"data": {"blur_max_len": "15"}}])
    assert recipe_deviations(mild) == ["data.blur_max_len 15 (paper: 60)"]


def test_blur_max_len_knob_default_is_the_papers_and_bad_values_are_errors() -> None:
    assert make_config("paper").data.blur_max_len == 60.0
    assert parse_overrides(["--blur-max-len", "12"]) == {"data": {"blur_max_len": "12"}}
    for bad in ("0", "-1", "nan", "2000", "long"):
        with pytest.raises(DeblurGANError) as e:
            make_config("paper", [{"data": {"blur_max_len": bad}}])
        assert "data.blur_max_len" in str(e.value) and "\n" not in str(e.value)
    train, val = load_datasets(make_config("paper", [{"data": {"blur_max_len": 12}}]))  # bundled samples
    assert train.max_len == val.max_len == 12.0  # validation is blurred like training


def test_overrides_parse_and_convert() -> None:
    o = parse_overrides(
        [
            "--lr",
            "2e-4",
            "--channels-last",
            "--no-vgg-normalize",
            "--data.crop=128",
            "--gp-norm",
            "pixel",
            "--name",
            "exp",
            "--data.val",
            "none",
        ]  # fmt: skip
    )
    cfg = make_config("paper", [o])
    assert cfg.optim.lr == 2e-4 and cfg.channels_last is True and cfg.loss.vgg_normalize is False
    assert cfg.data.crop == 128 and cfg.loss.gp_norm == "pixel" and cfg.name == "exp" and cfg.data.val is None
    assert resolve_key("critic_updates") == ("optim", "critic_updates")


def test_precedence_preset_then_yaml_then_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"optim": {"lr": 3e-4, "critic_updates": 3}, "ema": 0.99}))
    cfg, _ = _resolve(["--preset", "demo", "--config", str(f), "--critic-updates", "2"])
    assert cfg.preset == "demo" and cfg.model.ngf == make_config("demo").model.ngf
    assert cfg.optim.lr == 3e-4 and cfg.optim.critic_updates == 2 and cfg.ema == 0.99


def test_default_preset_depends_on_data() -> None:
    assert _resolve([])[0].preset == "demo"
    assert _resolve(["--data", "gopro:/somewhere"])[0].preset == "paper"


def _resolve(argv):
    from engine.train import build_parser, resolve

    args, extra = build_parser().parse_known_args(argv)
    return resolve(args, extra)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "fast"], "optim.lr must be float"),
        (["--critic-updates", "2.5"], "optim.critic_updates must be int"),
        (["--critic-updates", "0"], "optim.critic_updates must be >= 1"),
        (["--lrr", "1e-4"], "unknown config key --lrr"),
        (["--gp-norm", "l2"], "loss.gp_norm must be one of sample, pixel"),
        (["--amp", "fp8"], "amp must be one of off, bf16"),
        (["--ema", "1.5"], "ema must be in [0, 1)"),
        (["--crop", "30"], "multiple of 4"),
        (["--beta1", "1.0"], "optim.beta1 must be in [0, 1)"),
        (["--channels-last", "maybe"], "channels_last must be bool"),
        (["--device", "tpu"], "device must be auto"),
        (["--ngf"], "model.ngf must be int"),
        (["--ndf", "-3"], "model.ndf must be >= 1"),
        (["--pixel-weight", "-1"], "loss.pixel_weight must be >= 0"),
        (["--adv-weight", "0", "--content-weight", "0", "--pixel-weight", "0"], "nothing to train"),
        (["stray"], "unexpected argument 'stray'"),
        (["--resume"], "--resume needs a run folder"),
        (["--cuda-graph", "--compile"], "cannot be combined with compile"),
        (["--cuda-graph", "--device", "cpu"], "cuda_graph needs a CUDA device"),
    ],
)
def test_bad_config_is_one_line_error_and_no_work(argv, message, tmp_path, capsys) -> None:
    rc = main([*argv, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_yaml_files(tmp_path, capsys) -> None:
    cases = {
        "missing.yaml": None,
        "broken.yaml": "optim: [unclosed",
        "list.yaml": "- 1\n- 2\n",
        "unknown.yaml": "optim:\n  lr_typo: 1\n",
        "section.yaml": "optim: 3\n",
        "types.yaml": "optim:\n  lr: yes\n",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert main(["--config", str(tmp_path / name), "--print-config"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)


def test_print_config_round_trips(tmp_path, capsys) -> None:
    assert main(["--preset", "paper", "--lr", "5e-5", "--print-config"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "saved.yaml").write_text(text)
    again, _ = _resolve(["--config", str(tmp_path / "saved.yaml")])
    assert to_dict(again) == yaml.safe_load(text) and again.optim.lr == 5e-5


def test_paper_without_vgg_weights_stops_naming_both_options(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    rc = main(["--preset", "paper", "--name", "x", "--out-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ImageNet VGG19 weights not found")
    assert "--vgg-weights PATH" in err[-1] and str(tmp_path / "hub" / "checkpoints") in err[-1]
    assert not (tmp_path / "runs").exists()


def test_resume_needs_a_run_folder(tmp_path, capsys) -> None:
    assert main(["--resume", str(tmp_path / "nope")]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


def test_default_job_end_to_end_tiny(tmp_path, capsys) -> None:
    """The no-argument job (bundled samples, synthetic blur) with a tiny model: every output is there."""
    argv = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--crop", "32", "--critic-updates", "1", "--max-steps",
            "3", "--vgg-weights", "random", "--val-max-images", "1", "--samples", "1", "--name", "t",
            "--out-dir", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "preset demo" in err and "NOT the paper's loss" in err and "val PSNR" in err
    assert "note: not the paper's training recipe: " in err
    run = tmp_path / "t"
    for name in ("config.yaml", "train_log.csv", "val_log.csv", "metrics.json", "samples/latest.png"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 3
    from deblurgan.checkpoint import load_generator

    gen = load_generator(run / "checkpoints" / "step_00000003.pt")
    assert gen.config.ngf == 8 and gen.config.n_blocks == 1


def test_module_entry_point_bad_value_no_traceback(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-m", "engine.train", "--gp-weight", "ten", "--out-dir", str(tmp_path)],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and res.stderr == "error: loss.gp_weight must be float (got 'ten')\n"
    assert not any(tmp_path.iterdir())
