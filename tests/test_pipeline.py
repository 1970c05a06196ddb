import json

import numpy as np
import pytest
import torch
from experiments.data import mnist
from experiments.deep_compression import run as deep_compression
from experiments.models import LeNet300100

import netcompress as nc
from conftest import SmallNet
from netcompress.cli.main import main
from netcompress.distill.finetune import accuracy

RECIPE = """
steps:
  - {method: magnitude, sparsity: 0.8}
  - finetune: {epochs: 1, lr: 0.001}
  - {method: kmeans, bits: 4, init: linear}
"""


def test_recipe_runs_like_the_same_calls(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    steps = nc.read_recipe(tmp_path / "r.yaml")
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    torch.manual_seed(0)
    by_recipe = SmallNet()
    reports = nc.run_pipeline(by_recipe, steps, train=(x, y), progress=False)
    torch.manual_seed(0)
    by_hand = SmallNet()
    nc.compress(by_hand, method="magnitude", sparsity=0.8, progress=False)
    nc.finetune(by_hand, (x, y), epochs=1, lr=0.001, progress=False)
    nc.compress(by_hand, method="kmeans", bits=4, init="linear", progress=False)
    assert torch.equal(by_recipe(x), by_hand(x))
    assert [r.rows[0].method for r in reports] == ["magnitude", "kmeans"]


@pytest.mark.parametrize("text, message", [
    ("steps: []", "non-empty list of steps"),
    ("steps:\n  - {method: magnitud, sparsity: 0.5}", "step 1: unknown method 'magnitud'"),
    ("steps:\n  - {method: kmeans, bitz: 4}", "step 1: method 'kmeans' does not take bitz"),
    ("steps:\n  - {method: kmeans, bits: 4}\n  - finetune: {epochs: 2}", "step 2: finetune takes a mapping"),
    ("steps:\n  - {prune: 0.5}", "step 1 has neither 'method' nor 'finetune'"),
    ("steps: [unclosed", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo pwned']", "not valid YAML"),
])
def test_bad_recipes_fail_before_anything_runs(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        nc.read_recipe(tmp_path / "r.yaml")


def test_cli_recipe_with_labels_writes_the_container(tmp_path, capsys, monkeypatch):
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "tiny.py").write_text("from conftest import SmallNet\n\ndef build():\n    return SmallNet()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((32, 3, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 32))
    code = main(["compress", "--allow-degraded", "--model", "tiny:build", "--data", str(tmp_path / "d.npz"), "--recipe",
                 str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"), "--ncz", str(tmp_path / "m.ncz")])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    from_dir = nc.load(SmallNet(), tmp_path / "out")
    from_ncz = nc.load_compressed(SmallNet(), tmp_path / "m.ncz")
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(from_dir(x), from_ncz(x))
    assert main(["report", str(tmp_path / "m.ncz")]) == 0
    assert "compress rate (P+Q+H)" in capsys.readouterr().out
    (tmp_path / "junk.ncz").write_bytes(b"junk")
    assert main(["report", str(tmp_path / "junk.ncz")]) == 2
    assert "not a netcompress container" in capsys.readouterr().err
    assert main(["compress", "--allow-degraded", "--model", "tiny:build", "--data", str(tmp_path / "d.npz"), "--method", "kmeans",
                 "--setting", "bits=3", "-o", str(tmp_path / "out2")]) == 0
    assert nc.load(SmallNet(), tmp_path / "out2").fc1.levels == 8


def test_deep_compression_reaches_the_papers_rate_on_lenet_300_100(tmp_path):
    rows = deep_compression(tmp_path, networks=("LeNet-300-100",), echo=lambda *_: None)
    row = rows[0]
    assert (tmp_path / "LeNet-300-100.ncz").stat().st_size == row["compressed_bytes"]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert row["reference_bytes"] == 4 * 266_610
    assert row["rate"] >= 40
    assert row["compressed_accuracy"] >= row["reference_accuracy"] - 0.3
    loaded = nc.load_compressed(LeNet300100(), tmp_path / "LeNet-300-100.ncz")
    data = mnist()
    assert accuracy(loaded, data.test_x, data.test_y) == row["compressed_accuracy"]


@pytest.mark.parametrize("method", ["cp", "jaderberg", "cp-dalr", "jaderberg-dalr"])
def test_a_method_for_convolutions_only_runs_in_a_recipe(method):
    # Before: "step 1: a Linear is not a convolution": its settings were checked on a Linear probe.
    model = SmallNet().eval()
    (report,) = nc.run_pipeline(model, nc.pipeline.check_steps([{"method": method, "rank": 3}]),
                                data=torch.randn(16, 3, 8, 8))
    assert {r.name: r.status for r in report.rows} == {"conv1": "compressed", "conv2": "compressed",
                                                       "fc1": "left dense", "fc2": "left dense"}


def test_the_cli_counts_a_recipes_parameters_once(tmp_path, capsys, monkeypatch):
    # Before: each step's rows (every layer) were added up: "11,132 → 3,804" for this 9,230-parameter model.
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", torch.randn(16, 3, 8, 8).numpy())
    (tmp_path / "r.yaml").write_text("- {method: magnitude, sparsity: 0.8}\n- {method: kmeans, bits: 5, layers: [fc1]}\n")
    assert main(["compress", "--allow-degraded", "--model", f"{__file__}:SmallNet", "--data", "x.npy", "--recipe", "r.yaml",
                 "-o", "out"]) == 0
    total = sum(p.numel() for p in SmallNet().parameters())  # every layer of SmallNet holds a weight matrix
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("wrote out: "))
    before, after = (int(n.replace(",", "")) for n in line.split(": ")[1].split(" parameters")[0].split(" → "))
    assert before == total and 0.15 * total < after < 0.25 * total  # magnitude 0.8 keeps a fifth of the weights
