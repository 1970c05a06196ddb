"""Benchmark (a): DALR on a 2048×4608 layer from 4096 raw inputs at k = 64.

Compares netcompress (one streaming pass for XXᵀ, then the statistics-only solve)
with a plain implementation of the seed's formulas (Z = WX, SVD of Z, explicit
inverse of XXᵀ + λI) and with XXᵀ alone in float64, the one product that cannot be
avoided. Prints times and the relative output error of both on the inputs.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import netcompress as nc
from _common import best_time, print_table
from netcompress.lowrank.ridge import DEFAULT_LAM


def inputs(samples: int, features: int, seed: int = 0) -> torch.Tensor:
    """Post-ReLU inputs with a decaying spectrum, like a conv layer's im2col patches."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(samples, 256, generator=g) @ torch.randn(256, features, generator=g) / 16
    return torch.relu(latent + 0.1 * torch.randn(samples, features, generator=g))


def plain_dalr(W: torch.Tensor, X: torch.Tensor, k: int, lam_rel: float) -> torch.Tensor:
    """The seed's formulas as written: A = Û_k from SVD(Z), B = Û_kᵀ Z Xᵀ (XXᵀ + λI)⁻¹."""
    Z = W @ X
    U = torch.linalg.svd(Z, full_matrices=False)[0][:, :k]
    G = X @ X.T
    lam = lam_rel * G.diagonal().sum() / G.shape[0]
    inverse = torch.linalg.inv(G + lam * torch.eye(G.shape[0], dtype=G.dtype))
    return U @ (U.T @ Z @ X.T @ inverse)


def relative_error(W: torch.Tensor, What: torch.Tensor, X: torch.Tensor) -> float:
    return float((W @ X - What @ X).norm() / (W @ X).norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=int, default=2048)
    parser.add_argument("--inp", type=int, default=4608)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = nn.Linear(args.inp, args.out)
    x = inputs(args.samples, args.inp)
    batches = list(x.split(512))
    X64 = x.double()

    t_gram, _ = best_time(lambda: X64.T @ X64, args.repeat)
    t_collect, stats = best_time(lambda: nc.collect(layer, batches, progress=False), args.repeat)
    t_solve, f = best_time(lambda: nc.lowrank.dalr(layer, stats[""], args.rank), args.repeat)
    W = layer.weight.detach().double()
    t_plain, What_plain = best_time(lambda: plain_dalr(W, X64.T, args.rank, DEFAULT_LAM), args.repeat)
    A, B, _ = f.factors(args.rank)
    ours = t_collect + t_solve
    error_ours, error_plain = relative_error(W, A @ B, X64.T), relative_error(W, What_plain, X64.T)
    print(f"DALR, layer {args.out}×{args.inp}, {args.samples} inputs, k = {args.rank}, "
          f"{torch.get_num_threads()} threads, float64\n")
    print_table(
        ["", "seconds", "× XXᵀ", "relative output error"],
        [
            ["XXᵀ alone (one float64 GEMM)", f"{t_gram:.2f}", "1.00", "-"],
            ["netcompress: collect (streaming XXᵀ, sums)", f"{t_collect:.2f}", f"{t_collect / t_gram:.2f}", "-"],
            ["netcompress: dalr from the statistics", f"{t_solve:.2f}", f"{t_solve / t_gram:.2f}", "-"],
            ["netcompress total", f"{ours:.2f}", f"{ours / t_gram:.2f}", f"{error_ours:.9f}"],
            ["plain seed formulas (SVD of Z, inverse)", f"{t_plain:.2f}", f"{t_plain / t_gram:.2f}",
             f"{error_plain:.9f}"],
        ],
    )
    print(f"\nspeed-up over the plain formulas: {t_plain / ours:.2f}×; "
          f"output error, netcompress − plain: {error_ours - error_plain:+.2e}")


if __name__ == "__main__":
    main()
