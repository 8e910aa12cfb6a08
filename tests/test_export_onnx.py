"""ONNX export: graph contents, metadata, dynamic shapes, onnxruntime vs PyTorch, fp16/bf16 graphs vs fp32
PyTorch on natural photographs, CLI errors, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from deblurgan import Generator, GeneratorConfig
from deblurgan.checkpoint import load_generator, save_generator
from export import onnx as onnx_export
from export.onnx import (
    BF16_OPSET,
    OPSET,
    OnnxExporter,
    graph_precision,
    main,
    natural_images,
    parse_size,
    read_metadata,
    verify_onnx,
    verify_precision,
)
from export.runtime import OnnxRunner, load_runner

FP32_ATOL = 1e-4  # the bound for fp32 exports (max abs, outputs in [-1, 1])


def random_generator(seed: int = 0, **cfg) -> Generator:
    """A small generator with random weights AND biases (the authors' init zeroes biases)."""
    torch.manual_seed(seed)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=2, **cfg))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return g.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    ckpt = save_generator(random_generator(), d / "g.pth")
    assert main(["--checkpoint", str(ckpt), "--out", str(d / "g.onnx")]) == 0
    assert main(["--checkpoint", str(ckpt), "--out", str(d / "g_u8.onnx"), "--io", "uint8"]) == 0
    return d, load_generator(ckpt)


def test_graph_has_engine_friendly_ops(tiny):
    d, _ = tiny
    model = onnx.load(str(d / "g.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("InstanceNormalization") == 3 + 2 * 2 + 2  # stem, 2 down, 2 per block, 2 up
    assert ops.count("ConvTranspose") == 2
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 2 + 2 * 2
    assert all(a.s == b"reflect" for n in pads for a in n.attribute if a.name == "mode")


def test_dynamic_axes_and_metadata(tiny):
    d, g = tiny
    model = onnx.load(str(d / "g.onnx"))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and model.graph.output[0].name == "output"
    assert [bool(x.dim_param) for x in dims] == [True, False, True, True] and dims[1].dim_value == 3
    meta = read_metadata(d / "g.onnx")
    assert meta["deblurgan.input_range"] == "[-1, 1]"
    assert meta["deblurgan.layout"].startswith("NCHW RGB")
    assert meta["deblurgan.size_multiple"] == "4"
    assert '"ngf": 8' in meta["deblurgan.generator_config"]
    assert "deblurgan.engine_version" in meta


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 40, 96), (2, 3, 128, 52)])
def test_onnxruntime_matches_pytorch(tiny, shape):
    d, g = tiny
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) * 2 - 1
    runner = load_runner(d / "g.onnx", "onnx")
    with torch.no_grad():
        ref = g(x)
    got = runner(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= FP32_ATOL
    assert ref.std() > 0.05  # a non-trivial output, not a constant


def test_verify_helper_reports_error(tiny):
    d, g = tiny
    assert verify_onnx(d / "g.onnx", g) <= FP32_ATOL
    other = random_generator(seed=1)  # different weights: the check must notice
    assert verify_onnx(d / "g.onnx", other) > 1e-2


def test_uint8_io_graph(tiny):
    d, g = tiny
    meta = read_metadata(d / "g_u8.onnx")
    assert meta["deblurgan.io"] == "uint8" and meta["deblurgan.layout"].startswith("HWC")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(d / "g_u8.onnx"), providers=["CPUExecutionProvider"])
    frame = np.random.default_rng(0).integers(0, 256, (44, 60, 3), dtype=np.uint8)
    out = sess.run(None, {"image": frame})[0]
    assert out.dtype == np.uint8 and out.shape == frame.shape
    with torch.no_grad():
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1
        ref = torch.clamp(torch.round((g(x)[0] + 1) * 127.5), 0, 255).permute(1, 2, 0).numpy()
    diff = np.abs(out.astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # only float rounding ties may differ


def test_uint8_runner_matches_float_model(tiny):
    d, g = tiny
    runner = load_runner(d / "g_u8.onnx", "onnx")
    assert isinstance(runner, OnnxRunner) and runner.name == "onnx-uint8"
    x = torch.randint(0, 256, (2, 3, 32, 40), generator=torch.Generator().manual_seed(3)).float() / 127.5 - 1
    with torch.no_grad():
        ref = g(x)
    assert (runner(x) - ref).abs().max().item() <= 1.0 / 127.5 + 1e-6  # half a level of output rounding + a tie


def test_authors_layout_exports(tmp_path):
    """The full-width layout (ngf=64) with 1 block: the real channel counts go through the exporter."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=64, n_blocks=1)).eval()
    path = OnnxExporter(g).export(tmp_path / "wide.onnx")
    assert verify_onnx(path, g, sizes=[(32, 32), (48, 64)], batch=1) <= FP32_ATOL


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not found" in err and "\n" not in err
    ckpt = save_generator(random_generator(), tmp_path / "g.pth")
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--verify-sizes", "30x30"]) == 2
    assert "multiples of 4" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "x.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--opset", "17"]) == 2
    assert "--opset must be >= 18" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_failed_export_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous model")

    def boom(model, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError):
        OnnxExporter(random_generator()).export(out)
    assert out.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left behind


def test_parse_size():
    assert parse_size("64x96") == (64, 96)
    for bad in ("64", "64x", "63x64", "4x4", "axb"):
        with pytest.raises(Exception, match="size"):
            parse_size(bad)


def test_authors_checkpoint_and_triton_config_export(tmp_path):
    """The authors' release (bare DataParallel state dict) and a checkpoint trained with Triton kernels."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=64, n_blocks=1)).eval()
    original = {f"module.{k}": v for k, v in g.state_dict().items()}
    torch.save(original, tmp_path / "latest_net_G.pth")
    assert main(["--checkpoint", str(tmp_path / "latest_net_G.pth"), "--out", str(tmp_path / "a.onnx")]) == 0
    assert '"n_blocks": 1' in read_metadata(tmp_path / "a.onnx")["deblurgan.generator_config"]

    ckpt = torch.load(save_generator(random_generator(), tmp_path / "t.pth"), weights_only=True)
    ckpt["generator_config"]["kernels"] = "triton"  # as saved by a Triton-kernel training run
    torch.save(ckpt, tmp_path / "t.pth")
    assert main(["--checkpoint", str(tmp_path / "t.pth"), "--out", str(tmp_path / "t.onnx")]) == 0
    ops = {n.op_type for n in onnx.load(str(tmp_path / "t.onnx")).graph.node}
    assert "InstanceNormalization" in ops


def test_every_option_has_help():
    for action in onnx_export.build_parser()._actions:
        assert action.help, action.option_strings


def test_fp32_graph_says_its_precision(tiny):
    d, _ = tiny
    meta = read_metadata(d / "g.onnx")
    assert meta["deblurgan.precision"] == "fp32" and meta["deblurgan.norm_precision"] == "fp32"
    assert graph_precision(onnx.load(str(d / "g.onnx"))) == ("fp32", "fp32")


def test_checkpoint_defaults_to_the_shipped_model(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.onnx")]) == 2  # no weights ship yet: one line, nothing written
    err = capsys.readouterr().err
    assert err.startswith("error: no trained model ships") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_verification_failure_exits_1_and_keeps_the_old_file(tiny, tmp_path, capsys):
    """A graph that fails its own check must not be reported as a success, nor replace a good file."""
    d, _ = tiny
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous model")
    assert main(["--checkpoint", str(d / "g.pth"), "--out", str(out), "--atol", "1e-12"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: exported model differs from PyTorch by") and err.count("\n") == 1
    assert f"{out} was not written" in err
    assert out.read_bytes() == b"previous model" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# --- fp16 / bf16 graphs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """fp16 and bf16 graphs of a random-weight generator (the authors' N(0, 0.02) init), written by the CLI."""
    d = tmp_path_factory.mktemp("onnx_reduced")
    torch.manual_seed(0)
    ckpt = save_generator(Generator(GeneratorConfig(ngf=8, n_blocks=2)).eval(), d / "g.pth")
    for precision in ("fp16", "bf16"):
        assert main(["--checkpoint", str(ckpt), "--out", str(d / f"g_{precision}.onnx"), f"--{precision}"]) == 0
    return d, load_generator(ckpt)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_graph_is_typed_as_asked(reduced, precision):
    d, _ = reduced
    model = onnx.load(str(d / f"g_{precision}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert graph_precision(model) == (precision, "fp32")  # weights in the type, every instance norm in fp32
    assert all(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in (*model.graph.input, *model.graph.output)
    )
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Cast") >= 2 * ops.count("InstanceNormalization") + 2  # around every norm, in and out
    assert model.opset_import[0].version == (BF16_OPSET if precision == "bf16" else OPSET)
    meta = read_metadata(d / f"g_{precision}.onnx")
    assert meta["deblurgan.precision"] == precision and meta["deblurgan.norm_precision"] == "fp32"
    assert meta["deblurgan.layout"] == "NCHW RGB float32"


@pytest.mark.parametrize(("precision", "evaluator"), [("fp16", "onnxruntime"), ("bf16", "onnx.reference")])
def test_reduced_precision_matches_fp32_pytorch_on_photos(reduced, precision, evaluator):
    """ONNX Runtime runs the fp16 graph; it has no bf16 convolution on CPU, so the ONNX reference evaluator
    runs the bf16 one. Both against fp32 PyTorch on two natural photographs at two sizes."""
    d, g = reduced
    db, used = verify_precision(d / f"g_{precision}.onnx", g, sizes=[(64, 64), (48, 80)])
    assert used == evaluator
    assert db >= 45.0
    x = torch.from_numpy(np.stack(natural_images([(64, 64)]))).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert (g(x) - x).abs().mean() > 0.05  # the random generator changes the photos: a real comparison


def large_mean_generator() -> Generator:
    """The stem convolution's output has per-plane means near 1000 and deviations near 300: most planes'
    variance (~1e5) is beyond fp16's largest value (65504), while every activation still fits in fp16."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8, n_blocks=1)).eval()
    with torch.no_grad():
        g.model[1].weight.mul_(3000.0)
        g.model[1].bias.fill_(1000.0)
    return g


def _stem_planes(g: Generator) -> torch.Tensor:
    x = torch.from_numpy(np.stack(natural_images([(32, 32)]))).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        return g.model[1](g.model[0](x))


def test_fp32_instance_norm_survives_large_mean_activations(tmp_path):
    """fp16 graph, instance norm in fp32: still >= 45 dB where fp16 statistics would overflow.

    ONNX Runtime's CPU InstanceNormalization computes fp16 inputs in fp32, so it cannot show the overflow;
    the reference evaluator computes in the graph's types, as a strongly typed TensorRT network does."""
    g = large_mean_generator()
    stem = _stem_planes(g)
    assert stem.var(dim=(2, 3)).median() > 65504 and stem.abs().max() < 65504  # most planes overflow fp16
    path = OnnxExporter(g, precision="fp16").export(tmp_path / "large.onnx")
    for evaluator in ("onnxruntime", "reference"):
        db, _ = verify_precision(path, g, sizes=[(32, 32)], evaluator=evaluator)
        assert db >= 45.0, evaluator


def test_large_mean_case_fails_with_fp16_instance_norm(tmp_path, monkeypatch):
    """The control: the same graph with instance norm left in fp16 falls apart in the reference evaluator
    (and check_graph refuses to write such a graph)."""
    g = large_mean_generator()
    monkeypatch.setattr(onnx_export.Fp32Norm, "forward", lambda self, x: self.norm(x))
    with pytest.raises(RuntimeError, match="instance norm in fp16"):
        OnnxExporter(g, precision="fp16").export(tmp_path / "refused.onnx")
    monkeypatch.setattr(onnx_export, "check_graph", lambda *a, **k: None)
    path = OnnxExporter(g, precision="fp16").export(tmp_path / "fp16_norm.onnx")
    assert graph_precision(onnx.load(str(path))) == ("fp16", "fp16")
    db, _ = verify_precision(path, g, sizes=[(32, 32)], evaluator="reference")
    assert db < 30.0


def test_reduced_precision_cli_checks(reduced, tmp_path, capsys):
    d, _ = reduced
    out = tmp_path / "m.onnx"
    assert main(["--checkpoint", str(d / "g.pth"), "--out", str(out), "--bf16", "--opset", "18"]) == 2
    assert "--bf16 needs --opset >= 22" in capsys.readouterr().err
    assert main(["--checkpoint", str(d / "g.pth"), "--out", str(out), "--fp16", "--min-psnr", "200"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: fp16 model reaches") and "< 200 dB" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
