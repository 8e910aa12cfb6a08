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
    g = cfg.model.generator
    assert (g.ngf, g.n_blocks, g.dropout) == (64, 9, 0.5)
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
    assert cfg.preset == "demo" and cfg.model.generator.ngf == make_config("demo").model.generator.ngf
    assert cfg.optim.lr == 3e-4 and cfg.optim.critic_updates == 2 and cfg.ema == 0.99


def test_default_preset_depends_on_data() -> None:
    assert _resolve([])[0].preset == "demo"
    assert _resolve(["--data", "gopro:/somewhere"])[0].preset == "paper"


def _resolve(argv):
    from engine.train import parse_args, resolve

    return resolve(*parse_args(argv))


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
        (["--ngf"], "model.generator.ngf must be int"),
        (["--ndf", "-3"], "model.critic.ndf must be >= 1"),
        (["--n-layers-d", "0"], "model.critic.n_layers must be >= 1"),
        (["--model.generator.kernels", "triton"], "unknown config key --model.generator.kernels"),
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


@pytest.mark.parametrize("preset", ["paper", "demo", "h200"])
def test_every_preset_is_accepted_by_the_cli(preset, capsys) -> None:
    """--preset takes every preset engine.config defines (h200 was once refused by a hard-coded list)."""
    assert main(["--preset", preset, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["preset"] == preset


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


TINY = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--crop", "32", "--critic-updates", "1", "--vgg-weights",
        "random", "--val-max-images", "1", "--samples", "1", "--no-progress"]  # fmt: skip


def _no_download(monkeypatch, tmp_path):
    """An empty hub cache and a download that must not be attempted."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def forbidden(*a, **k):
        raise AssertionError("a download was attempted before the inputs were checked")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)


def test_cpu_threads_follow_the_idle_cores(monkeypatch) -> None:
    from engine import threads

    assert threads.choose_threads(2, 2.0) == 2  # a quiet machine keeps every core
    assert threads.choose_threads(2, 0.97) == 1  # another job on one core: no threads waiting for it
    assert threads.choose_threads(2, 0.1) == 1 and threads.choose_threads(8, None) == 8
    assert threads.choose_threads(8, 7.8, processes=2) == 4 and threads.choose_threads(2, 2.0, processes=4) == 1
    cpus = threads.usable_cores()
    idle = threads.idle_cores(cpus, seconds=0.05)
    assert idle is None or 0.0 <= idle <= len(cpus) + 1e-6
    before = torch.get_num_threads()
    try:
        for var in threads.ENV_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
        monkeypatch.setattr(threads, "idle_cores", lambda cpus: 1.02)
        line = threads.set_cpu_threads(0)
        assert torch.get_num_threads() == 1 and line.startswith("CPU threads: 1 (1.0 of 2 cores idle")
        assert "--threads N" in line and "OMP_NUM_THREADS" in line  # says how to change it
        monkeypatch.setattr(threads, "idle_cores", lambda cpus: 1.97)
        threads.set_cpu_threads(0)
        assert torch.get_num_threads() == 2
        assert threads.set_cpu_threads(1) == "CPU threads: 1 (--threads)" and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert "OMP_NUM_THREADS=2" in threads.set_cpu_threads(0) and torch.get_num_threads() == 1  # left as set
    finally:
        torch.set_num_threads(before)


def test_a_bare_folder_trains_on_its_images_and_says_how(tmp_path, monkeypatch, capsys) -> None:
    from skimage import data as skdata

    from deblurgan.io import write_image

    photos = tmp_path / "photos"
    for name in ("astronaut", "coffee"):
        write_image(photos / f"{name}.png", getattr(skdata, name)()[:96, :128])
    _no_download(monkeypatch, tmp_path)
    before = torch.get_num_threads()
    try:
        argv = ["--data", str(photos), *TINY, "--max-steps", "2", "--num-workers", "0", "--name", "r"]
        rc = main([*argv, "--out-dir", str(tmp_path / "runs")])
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("preset paper (the default with --data")  # the preset and why, first
    assert f"data.train: {photos} read as synthetic:{photos} (" in err and "blurred on the fly" in err
    saved = yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())
    assert saved["data"]["train"] == f"synthetic:{photos}"  # the resolved spec: a resume reads the folder alike
    assert f"run folder {tmp_path / 'runs' / 'r'}" in err


@pytest.mark.parametrize("case", ["missing-folder", "out-dir-is-a-file", "bad-val-spec"])
def test_inputs_are_checked_before_any_download_or_file(case, tmp_path, monkeypatch, capsys) -> None:
    _no_download(monkeypatch, tmp_path)
    (tmp_path / "photos").mkdir()
    from skimage import data as skdata

    from deblurgan.io import write_image

    write_image(tmp_path / "photos" / "a.png", skdata.coffee()[:64, :64])
    (tmp_path / "file").write_text("x")
    argv = {
        "missing-folder": ["--data", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "runs")],
        "out-dir-is-a-file": ["--data", str(tmp_path / "photos"), "--out-dir", str(tmp_path / "file" / "runs")],
        "bad-val-spec": ["--data", str(tmp_path / "photos"), "--data.val", "gopro:" + str(tmp_path / "nope"),
                         "--out-dir", str(tmp_path / "runs")],
    }[case]  # fmt: skip
    rc = main([*argv, "--preset", "paper", "--vgg-weights", "imagenet", "--name", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not err.startswith("run folder") and not (tmp_path / "runs").exists()


def test_done_names_the_checkpoint_to_use_and_the_command(tmp_path) -> None:
    from engine.train import done_lines

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    val = {"psnr": 25.0, "ssim": 0.5, "psnr_input": 24.0, "ssim_input": 0.4, "weights": "ema"}
    summary = {"step": 768, "seconds": 70.0, "val": val, "best": {"psnr": 25.5, "step": 512},
               "last_checkpoint": str(run / "checkpoints" / "step_00000768.pt")}  # fmt: skip
    lines = done_lines(summary, run)
    assert lines[0].startswith("done: step 768") and "val PSNR 25.00 dB" in lines[0]
    best = run / "checkpoints" / "best.pt"
    assert lines[1].startswith(f"use {best} (the best validation PSNR, 25.50 dB at step 512)")
    assert lines[2].strip() == f"python -m engine.deblur IMAGES... --checkpoint {best} --out deblurred/"
    no_val = {"step": 5, "seconds": 1.0, "val": None, "best": None, "last_checkpoint": summary["last_checkpoint"]}
    lines = done_lines(no_val, run)
    assert "step_00000768.pt (the last checkpoint: no validation ran)" in lines[1]
    assert lines[2].strip().endswith(f"--checkpoint {summary['last_checkpoint']} --out deblurred/")


def test_help_lists_the_common_options_and_how_to_see_every_key(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--preset", "--data", "--name", "--out-dir", "--resume", "--vgg-weights", "--config", "--kernels",
                 "--amp", "--max-steps", "--epochs-constant", "--time-limit-s", "--threads", "--help-all",
                 "--print-config"):  # fmt: skip
        assert flag in out, flag
    assert main(["--help-all"]) == 0
    out = capsys.readouterr().out
    for key in ("--optim.beta1 0.9", "--data.blur-max-len 60.0", "--model.critic.n-layers 3", "--loss.gp-norm sample"):
        assert key in out, key
    cfg, _ = _resolve(["--data", "gopro:/x", "--out-dir=o", "--time-limit-s", "5", "--lr", "2e-4"])
    assert (cfg.data.train, cfg.out_dir, cfg.time_limit_s, cfg.optim.lr) == ("gopro:/x", "o", 5.0, 2e-4)


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04garbage", bytes(range(256)) * 8, "truncated"])
def test_a_corrupt_checkpoint_never_suggests_an_unsafe_load(content, tmp_path) -> None:
    from deblurgan.checkpoint import load_checkpoint, save_generator
    from deblurgan.config import GeneratorConfig
    from deblurgan.errors import CheckpointError
    from deblurgan.networks import Generator

    path = tmp_path / "g.pt"
    if content == "truncated":
        save_generator(Generator(GeneratorConfig(ngf=8, n_blocks=1)), path)
        content = path.read_bytes()[:-300]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: not a readable checkpoint (") and "\n" not in msg
    assert "weights_only" not in msg and "False" not in msg and "trust" not in msg, msg


def test_bench_train_ids_name_what_ran() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "pytest", "bench/test_bench_train.py", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, timeout=300)  # fmt: skip
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    assert ids, res.stdout + res.stderr
    from bench.test_bench_train import BATCHES, CROP

    for line in ids:
        assert any(f"-b{b}-{CROP}px]" in line for b in BATCHES), line
    if not torch.cuda.is_available():
        assert not any("16" in line for line in ids)  # CPU runs batch 1 and 2 at 32 px


def test_the_project_speaks_of_itself_only() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("README.md", "bench/README.md", ".ci/run", "docs/training.md"):
        text = (root / name).read_text().lower()
        for word in ("borrowed", "borrows", "lent ", "session"):
            assert word not in text, (name, word)
    for name in ("engine/graphed.py", "bench/deepdeblur.py", "bench/FLOORS.md", "README.md", "docs/training.md"):
        text = (root / name).read_text()
        assert "/work/" not in text and "/root/" not in text and "shared/reference" not in text, name


def test_an_old_style_run_folder_and_checkpoint_still_load_and_resume(tmp_path, capsys) -> None:
    """config.yaml and checkpoints written with the flat `model` section (ngf, n_layers_d, ...) and kernels 'auto'."""
    from deblurgan.checkpoint import atomic_save, load_checkpoint, load_generator

    argv = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--crop", "32", "--critic-updates", "1",
            "--vgg-weights", "random", "--val-max-images", "1", "--samples", "1", "--no-progress", "--threads", "1"]
    before = torch.get_num_threads()
    try:
        assert main([*argv, "--max-steps", "2", "--name", "old", "--out-dir", str(tmp_path)]) == 0
        run = tmp_path / "old"
        saved = yaml.safe_load((run / "config.yaml").read_text())
        g, c = saved["model"]["generator"], saved["model"]["critic"]
        flat = {"ngf": g["ngf"], "n_blocks": g["n_blocks"], "dropout": g["dropout"],
                "learn_residual": g["learn_residual"], "zero_init_last": saved["model"]["zero_init_last"],
                "ndf": c["ndf"], "n_layers_d": c["n_layers"], "kernels": "auto"}  # fmt: skip
        saved["model"] = flat
        (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
        path = run / "checkpoints" / "step_00000002.pt"
        ckpt = load_checkpoint(path)
        ckpt["config"]["model"] = flat
        ckpt["generator_config"]["kernels"] = ckpt["critic_config"]["kernels"] = "auto"
        atomic_save(ckpt, path)
        assert load_generator(path).config.ngf == 8
        capsys.readouterr()
        assert main(["--resume", str(run), "--max-steps", "3", "--no-progress", "--threads", "1"]) == 0
        err = capsys.readouterr().err
        assert "resumed from" in err and "done: step 3" in err
        resaved = yaml.safe_load((run / "config.yaml").read_text())["model"]
        assert resaved["generator"]["ngf"] == 8 and resaved["critic"]["n_layers"] == c["n_layers"]
    finally:
        torch.set_num_threads(before)
