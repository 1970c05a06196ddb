"""Figures of the demos (matplotlib, imported only here)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from netcompress._core.atomic import atomic_write_bytes

__all__ = ["plot_accuracy", "plot_activation_rates", "plot_siamese"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib; install it with pip install 'netcompress[demo]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy(tables: Sequence, path: str | Path) -> None:
    """Accuracy against params % kept, one panel per (case, layer) table, one line per method."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    for ax, table in zip(axes[0], tables, strict=True):
        for method, accs in table.accuracy.items():
            ax.plot(table.params_percent, accs, marker="o", markersize=3, label=method)
        ax.axhline(table.uncompressed, color="k", linestyle="--", linewidth=1, label="uncompressed")
        ax.set_xscale("log")
        ax.set_xlabel(f"params of {table.layer} kept (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{table.case}\n{table.layer}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(figure, Path(path))
    plt.close(figure)


def plot_activation_rates(rates: dict, path: str | Path) -> None:
    """Histogram and unit-by-unit scatter of the activation rates on source against target data."""
    plt = _pyplot()
    figure, (hist, scatter) = plt.subplots(1, 2, figsize=(9, 3.6))
    bins = [i / 40 for i in range(41)]
    hist.hist(rates["source"], bins=bins, alpha=0.6, label="source (MNIST)")
    hist.hist(rates["target"], bins=bins, alpha=0.6, label="target (UCI digits)")
    hist.set_xlabel(f"activation rate of {rates['layer']} units")
    hist.set_ylabel("units")
    hist.legend(fontsize=8)
    scatter.scatter(rates["source"], rates["target"], s=3, alpha=0.5)
    scatter.plot([0, 1], [0, 1], color="k", linewidth=1)
    scatter.set_xlabel("activation rate on source")
    scatter.set_ylabel("activation rate on target")
    figure.suptitle("the activation distribution shifts with the domain", fontsize=10)
    _save(figure, Path(path))
    plt.close(figure)


def plot_siamese(timing: dict, path: str | Path) -> None:
    """The ranking loss per step of the standard and the fast Siamese forms, with their ms per step."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for name, style in (("standard", "-"), ("fast", "--")):
        run = timing[name]
        axis.plot(range(1, len(run["losses"]) + 1), run["losses"], style,
                  label=f"{name} Siamese ({run['ms_per_step']:.0f} ms/step)")
    axis.set_xlabel("step")
    axis.set_ylabel("ranking loss")
    axis.legend()
    _save(figure, Path(path))
    plt.close(figure)
