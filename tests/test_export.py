"""ONNX export (issue 10, item 5): compressed models round-trip through onnxruntime, all or nothing."""

import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netcompress as nc
from conftest import SmallNet
from netcompress.cli.main import main

onnx = pytest.importorskip("onnx", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")

COMPRESSIONS = {
    "dalr": dict(method="dalr", rank=3),
    "channel": dict(method="channel", sparsity=0.5),
    "magnitude": dict(method="magnitude", sparsity=0.8),
}


def _data() -> torch.Tensor:
    return torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _compressed(name: str) -> nn.Module:
    model = SmallNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples for fc1: the warning is not what these tests read
        nc.compress(model, _data().split(16), progress=False, **COMPRESSIONS[name])
    return model


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _op_types(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("name", sorted(COMPRESSIONS))
def test_compressed_models_round_trip_through_onnxruntime(tmp_path, name):
    model, x = _compressed(name), _data()
    kinds = [type(m) for m in model.modules()]
    result = nc.export_onnx(model, x[:8], tmp_path / "model.onnx", check_data=x.split(13))  # 13, 13, 13, 1
    assert result.max_abs_diff < 1e-4 and (result.batches, result.samples) == (5, 48)
    assert result.path.stat().st_size == result.bytes and result.opset > 0
    assert "max abs difference" in str(result)
    # The batch axis is dynamic: a batch size neither traced nor checked runs, and matches PyTorch.
    with torch.no_grad():
        expected = model(x[:3])
    assert (_run_onnx(tmp_path / "model.onnx", x[:3]) - expected).abs().max() < 1e-4
    assert [type(m) for m in model.modules()] == kinds and model.training  # given back as it was
    dense = nc.export_onnx(SmallNet(), x[:8], tmp_path / "dense.onnx")
    if name == "magnitude":  # plain layers with zeros: the graph of the dense model, no mask product
        assert _op_types(tmp_path / "model.onnx") == _op_types(tmp_path / "dense.onnx")
    else:  # factored or physically smaller layers: a smaller file
        assert result.bytes < 0.5 * dense.bytes


def test_quantized_layers_export_their_dequantised_weights(tmp_path):
    model, x = SmallNet(), _data()
    nc.compress(model, method="kmeans", bits=3, progress=False)
    result = nc.export_onnx(model, x[:8], tmp_path / "model.onnx", check_data=x.split(13))
    assert result.max_abs_diff < 1e-4
    assert _op_types(tmp_path / "model.onnx") == ["Conv", "Relu", "Conv", "Relu", "Flatten", "Gemm", "Relu", "Gemm"]


def test_export_runs_in_eval_mode_and_gives_each_module_its_mode_back(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 5))
    x = _data()
    nc.compress(model, x.split(16), method="channel", sparsity=0.5, layers=["0"], progress=False)
    model[1].eval()  # a frozen BatchNorm in a model that trains
    result = nc.export_onnx(model, x[:8], tmp_path / "model.onnx", check_data=x.split(16))
    assert result.max_abs_diff < 1e-4  # dropout and batch statistics off, as in PyTorch's eval mode
    assert [m.training for m in model] == [True, False, True, True, True, True]


def test_a_foreign_file_is_refused_and_overwrite_replaces_it(tmp_path):
    model, x = _compressed("dalr"), _data()
    target = tmp_path / "model.onnx"
    target.write_text("my notes")
    with pytest.raises(ValueError, match="exists and is not an ONNX file netcompress wrote"):
        nc.export_onnx(model, x[:8], target)
    assert target.read_text() == "my notes"
    with pytest.raises(ValueError, match="is a directory"):
        nc.export_onnx(model, x[:8], tmp_path)
    nc.export_onnx(model, x[:8], target, overwrite=True)
    nc.export_onnx(SmallNet(), x[:8], target)  # its own file is replaced without being asked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


class SignDependent(nn.Module):
    """A branch on the data: the traced graph keeps the branch the example took."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x * 3


class BatchBaked(nn.Module):
    """A tensor of the traced batch size: the graph cannot run on another one."""

    def forward(self, x):
        return x.flatten(1)[:, :5] + torch.zeros(len(x), 5)


@pytest.mark.parametrize("model, message", [
    (SignDependent(), "differ from PyTorch's by up to"),
    (BatchBaked(), "onnxruntime cannot run the exported model on check_data batch 0 of shape (3, 3, 8, 8)"),
])
def test_a_failed_check_leaves_no_file_behind(tmp_path, capfd, model, message):
    x = _data().abs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about the branch: the check is what must catch it
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            nc.export_onnx(model, x[:8], tmp_path / "new" / "model.onnx", check_data=[-x[:3]])
    assert list(tmp_path.iterdir()) == []  # neither the file, its temporary, nor the folder made for it
    assert capfd.readouterr().err == ""  # the error is the sentence: onnxruntime logs nothing of its own


def test_bad_arguments_and_a_missing_extra_are_one_sentence(tmp_path, monkeypatch):
    model, x = SmallNet(), _data()
    with pytest.raises(TypeError, match="example_input is a dict of keyword inputs"):
        nc.export_onnx(model, {"x": x}, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="atol must be a finite number"):
        nc.export_onnx(model, x, tmp_path / "m.onnx", atol=-1)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'netcompress\[onnx\]'"):
        nc.export_onnx(model, x, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A user's folder: a factory module, trained weights, target data; the current directory."""
    (tmp_path / "exportnet.py").write_text("from conftest import SmallNet\n\ndef build():\n    return SmallNet()\n")
    save_file(SmallNet().state_dict(), tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", _data().numpy())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("netcompress: error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_cli_exports_the_output_of_compress(work, capsys):
    model = ["--model", "exportnet.py:build", "--weights", "w.safetensors"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["compress", "--allow-degraded", *model, "--data", "x.npy", "--method", "dalr", "--rank", "3", "-o", "out"]) == 0
    capsys.readouterr()
    assert main(["export", *model, "--load", "out", "--data", "x.npy", "--batch-size", "16",
                 "--onnx", "model.onnx"]) == 0
    printed = capsys.readouterr().out
    assert "wrote model.onnx" in printed and "3 batch(es), 40 samples: max abs difference" in printed
    compressed = nc.load(SmallNet(), work / "out")
    x = _data()
    with torch.no_grad():
        assert (_run_onnx(work / "model.onnx", x[:5]) - compressed(x[:5])).abs().max() < 1e-4

    (work / "notes.onnx").write_text("mine")
    assert main(["export", *model, "--load", "out", "--data", "x.npy", "--onnx", "notes.onnx"]) == 2
    assert "notes.onnx exists and is not an ONNX file netcompress wrote" in _error(capsys)
    assert (work / "notes.onnx").read_text() == "mine"
    assert main(["export", *model, "--load", "missing", "--data", "x.npy", "--onnx", "m.onnx"]) == 2
    assert "--load missing is not a directory" in _error(capsys)
    np.save(work / "wrong.npy", np.zeros((4, 5), dtype=np.float32))
    assert main(["export", *model, "--load", "out", "--data", "wrong.npy", "--onnx", "m.onnx"]) == 2
    _error(capsys)
    assert not (work / "m.onnx").exists()


def test_a_w8a8_model_exports_int8_weights_that_onnxruntime_runs_in_integers(tmp_path):
    torch.manual_seed(0)
    model = SmallNet().eval()
    calibration = [torch.randn(64, 3, 8, 8) for _ in range(4)]
    dense = nc.export_onnx(model, calibration[0], tmp_path / "float.onnx")
    nc.compress(model, calibration, nc.Uniform(bits=8, activations=8), progress=False)
    result = nc.export_onnx(model, calibration[0], tmp_path / "w8a8.onnx", check_data=calibration[1:])
    assert result.integer_layers == 4
    graph = onnx.load(str(tmp_path / "w8a8.onnx")).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]  # not zero points
    assert sum(int(np.prod(t.dims)) for t in int8) == sum(m.codes.numel() for m in model.modules() if hasattr(m, "codes"))
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1 for t in graph.initializer)  # no float weight
    assert result.bytes < dense.bytes / 2.5  # one byte per weight; scales, biases and the graph on top
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(tmp_path / "w8a8.onnx"), options, providers=["CPUExecutionProvider"])
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
    fused = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert fused & {"QLinearConv", "QGemm", "QLinearMatMul"}  # ONNX Runtime computes some layers in int8


def test_a_w8a8_convolution_takes_its_padding_and_the_batchnorm_after_it_into_its_int8_weight(tmp_path):
    torch.manual_seed(0)
    # 'same' padding: its replacement pads explicitly, and the export takes that padding into the Conv
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding="same"), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1),
                          nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():  # trained-looking statistics, one negative factor among them
        for norm in (model[1], model[4]):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
        model[1].weight[3] = -0.8
    model.eval()
    calibration = [torch.randn(64, 3, 8, 8) for _ in range(4)]
    nc.compress(model, calibration, nc.Uniform(bits=8, activations=8), progress=False)
    result = nc.export_onnx(model, calibration[0], tmp_path / "w8a8.onnx", check_data=calibration[1:])
    graph = onnx.load(str(tmp_path / "w8a8.onnx")).graph
    assert result.integer_layers == 3
    assert not {"BatchNormalization", "Pad"} & {n.op_type for n in graph.node}
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(tmp_path / "w8a8.onnx"), options, providers=["CPUExecutionProvider"])
    # the first convolution's output is rounded onto the next grid before its ReLU as well: an int8 convolution
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert float((got - expected).norm() / expected.norm()) < 0.02
