"""Pictures: per-layer probe accuracy, the searched cell, accuracy vs size.

Every figure is written atomically as PNG (matplotlib's Agg backend, no screen).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.bezier import BezierSegment  # noqa: E402
from matplotlib.patches import ConnectionStyle  # noqa: E402

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


_OP_COLORS = {"std_conv": "#4C72B0", "dil_conv": "#55A868", "avg_pool": "#C44E52", "max_pool": "#8172B2",
              "skip": "#937860", "align": "#DA8BC3"}


def plot_cell(arch: dict, path, title: str) -> None:
    """The searched cell as a DAG, like the paper's Figure 3.

    Nodes 0/1 are the cell inputs c_{k-2}, c_{k-1}; nodes 2.. are the intermediate
    nodes; their attentive sum is the output c_k. ``zero`` edges are not drawn.
    """
    edges = {k: v for k, v in arch.items() if k.startswith("edge_")}
    num_nodes = max(int(k.split("_")[1]) for k in edges) - 1
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{j: f"{j - 1}" for j in range(2, 2 + num_nodes)}, "out": "c_{k}"}
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(names)
    pos = {0: (0, 1.0), 1: (0, -1.0), "out": (num_nodes + 1.3, 0)}
    pos.update({j: (j - 1, 0.9 if j % 2 else -0.9) for j in range(2, 2 + num_nodes)})

    fig, ax = plt.subplots(figsize=(2.4 * (num_nodes + 2), 4))
    for label, op in edges.items():
        _, j, i = label.split("_")
        if op != "zero":
            graph.add_edge(int(i), int(j), op=op)
    for j in range(2, 2 + num_nodes):
        graph.add_edge(j, "out", op="")
    colors = {0: "#A1C9F4", 1: "#A1C9F4", "out": "#FFB482"}
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=1500, edgecolors="black",
                           node_color=[colors.get(n, "#D0D0D0") for n in graph.nodes])
    nx.draw_networkx_labels(graph, pos, labels={n: f"${v}$" if "_" in v else v for n, v in names.items()},
                            ax=ax, font_size=11)
    edge_labels = []  # (start, end, rad, op, color): placed once the axes' limits are final
    for u, v, data in graph.edges(data=True):
        op = data["op"]
        color = next((c for prefix, c in _OP_COLORS.items() if op.startswith(prefix)), "#999999")
        rad = 0.25 if isinstance(v, int) and isinstance(u, int) and v - u > 1 else 0.08
        nx.draw_networkx_edges(graph, pos, edgelist=[(u, v)], ax=ax, node_size=1500, arrowsize=15,
                               edge_color=color, width=2 if op else 1, style="solid" if op else "dashed",
                               connectionstyle=f"arc3,rad={rad}")
        if op:
            edge_labels.append((pos[u], pos[v], rad, op, color))
    depth = arch.get("depth")
    ax.set_title(title + (f"  (K = {depth})" if depth else ""))
    ax.axis("off")
    ax.margins(0.12)
    ax.autoscale_view()
    placed = []  # the labels drawn so far, in display coordinates
    for start, end, rad, op, color in edge_labels:
        x, y = _label_position(ax.transData, start, end, rad, placed)
        ax.text(x, y, op, color=color, fontsize=9, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=color, lw=0.8))
    save_figure(fig, path)


def _label_position(to_display, start, end, rad: float, placed: list, size=(85, 22)) -> tuple[float, float]:
    """Where an edge's label goes (data coordinates): on the edge's arc3 curve (matplotlib's own,
    which bends in display coordinates), at its midpoint unless a label already ``placed`` there
    (display coordinates; boxes of ``size`` pixels) would overlap it, then further along the
    curve; crossing edges otherwise put their labels on one spot."""
    a, b = to_display.transform([start, end])
    curve = BezierSegment(ConnectionStyle.Arc3(rad=rad).connect(tuple(a), tuple(b)).vertices)

    def free(p) -> bool:
        return all(abs(p[0] - q[0]) > size[0] or abs(p[1] - q[1]) > size[1] for q in placed)

    point = next((p for p in map(curve, (0.5, 0.65, 0.35, 0.75, 0.25)) if free(p)), curve(0.5))
    placed.append(point)
    return tuple(to_display.inverted().transform(point))


def plot_tradeoff(points: list[tuple[str, int, float]], path, title: str, metric: str = "accuracy") -> None:
    """Dev metric against params, one labelled point per student (label, params, metric in [0,1])."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, params, value in points:
        ax.scatter(params / 1e6, 100 * value, s=40)
        ax.annotate(label, (params / 1e6, 100 * value), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("params (M, embedding included)")
    ax.set_ylabel(f"dev {metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_accuracy_vs_cost(students: list[dict], references: list[dict], path, title: str,
                          metric: str = "accuracy", teacher_value: float | None = None,
                          each_seed: list[dict] | None = None) -> None:
    """Dev metric against params (left) and against speedup over BERT-base (right, log scale).

    ``students``: ``{"label", "params", "speedup", "value"}`` (value in points), joined by a line in
    order of size; ``references``: published points in grey, drawn on the right only where they give
    a speedup (``None``: not published); ``teacher_value``: a dashed line; ``each_seed``: the single
    runs behind points that are means over seeds (same keys, no label needed), as hollow markers."""
    fig, (by_params, by_speed) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    ours = sorted(students, key=lambda s: s["params"])
    for ax, x in ((by_params, lambda p: p["params"] / 1e6), (by_speed, lambda p: p["speedup"])):
        shown = [p for p in references if x(p) is not None]
        ax.scatter([x(p) for p in shown], [p["value"] for p in shown], marker="s", color="grey", s=30,
                   label="published")
        for p in shown:
            ax.annotate(p["label"], (x(p), p["value"]), textcoords="offset points", xytext=(5, -10), fontsize=8,
                        color="grey")
        ax.plot([x(s) for s in ours], [s["value"] for s in ours], "o-", color="#4C72B0",
                label="ours (mean of seeds)" if each_seed else "ours")
        if each_seed:  # the spread a mean hides
            ax.plot([x(s) for s in each_seed], [s["value"] for s in each_seed], "o", markerfacecolor="none",
                    color="#4C72B0", alpha=0.6, markersize=5, label="ours, each seed")
        for s in ours:
            ax.annotate(s["label"], (x(s), s["value"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if teacher_value is not None:
            ax.axhline(teacher_value, color="#C44E52", linestyle="--", linewidth=1, label="our teacher")
        ax.grid(alpha=0.3)
        ax.margins(x=0.2)  # room for the labels of the outermost points
    by_params.set_xlabel("params (M, embedding included)")
    by_speed.set_xlabel("speedup over the BERT-base architecture (batch 128, 1 thread)")
    by_speed.set_xscale("log")
    by_speed.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    # Of the minor ticks, label 2, 4, 6 and 8 of each decade (20x, 40x, ...): all nine would overlap.
    by_speed.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x" if str(v)[0] in "2468" else ""))
    by_params.set_ylabel(f"dev {metric} (%)")
    by_params.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    save_figure(fig, path)
