"""Pictures: per-layer probe accuracy, the searched cell, accuracy vs size.

Every figure is written atomically as PNG (matplotlib's Agg backend, no screen).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import atomic  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> None:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=str(path).rsplit(".", 1)[-1])
    plt.close(fig)


def plot_probe_accuracy(accuracies: list[float], path, title: str) -> None:
    """Dev accuracy of each teacher layer's probe (the last bar is the teacher's head)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    layers = list(range(1, len(accuracies) + 1))
    bars = ax.bar(layers, [100 * a for a in accuracies], color="#4C72B0")
    bars[-1].set_color("#DD8452")
    for x, a in zip(layers, accuracies):
        ax.annotate(f"{100 * a:.1f}", (x, 100 * a), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("teacher layer j (last = the teacher's own head)")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_xticks(layers)
    low = min(accuracies) * 100
    ax.set_ylim(max(0, low - 10), 100)
    ax.set_title(title)
    save_figure(fig, path)
