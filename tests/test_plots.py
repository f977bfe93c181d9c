"""The searched-cell picture (plots.plot_cell): every edge's label on its own curve, none on another."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import ConnectionStyle  # noqa: E402

from nni_adabert.plots import _label_position, plot_cell  # noqa: E402


def on_arc3(ax, start, end, rad, point) -> bool:
    """Whether ``point`` (data) lies on matplotlib's own arc3 curve from ``start`` to ``end``."""
    a, b = ax.transData.transform([start, end])
    p0, control, p2 = ConnectionStyle.Arc3(rad=rad).connect(tuple(a), tuple(b)).vertices
    t = np.linspace(0, 1, 2001)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * control + t**2 * p2
    return np.hypot(*(curve - ax.transData.transform(point)).T).min() < 1.0  # pixels


def test_crossing_edges_get_separate_labels_on_their_own_curves():
    fig, ax = plt.subplots(figsize=(14, 4))
    ax.set_xlim(-0.5, 5.5), ax.set_ylim(-1.5, 1.5)
    # c_{k-2} -> node 3 and c_{k-1} -> node 2 of a 3-node cell: their midpoints nearly coincide.
    edges = [((0, 1.0), (3, -0.9), 0.25), ((0, -1.0), (2, 0.9), 0.25)]
    placed = []
    points = [_label_position(ax.transData, start, end, rad, placed) for start, end, rad in edges]
    for (start, end, rad), point in zip(edges, points):
        assert on_arc3(ax, start, end, rad, point)
    (x1, y1), (x2, y2) = ax.transData.transform(points)
    assert abs(x1 - x2) > 85 or abs(y1 - y2) > 22  # the label boxes do not overlap
    # Alone, the second edge's label would have sat on its midpoint, on top of the first one.
    alone = _label_position(ax.transData, *edges[1], [])
    (xa, ya), = ax.transData.transform([alone])
    assert abs(xa - x1) < 85 and abs(ya - y1) < 22
    plt.close(fig)


def test_plot_cell_labels_every_non_zero_edge_once(tmp_path, monkeypatch):
    arch = {"depth": 3, "edge_2_0": "std_conv_7", "edge_2_1": "dil_conv_3", "edge_3_0": "std_conv_7",
            "edge_3_1": "std_conv_7", "edge_3_2": "zero", "edge_4_0": "std_conv_3", "edge_4_1": "std_conv_3",
            "edge_4_2": "std_conv_7", "edge_4_3": "zero"}
    edge_labels, text = [], matplotlib.axes.Axes.text

    def record(self, x, y, s, *args, **kwargs):
        if kwargs.get("bbox"):  # edge labels are boxed; node names are not
            edge_labels.append(s)
        return text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", record)
    plot_cell(arch, tmp_path / "cell.png", "cell")
    assert sorted(edge_labels) == sorted(op for k, op in arch.items() if k.startswith("edge_") and op != "zero")
    assert (tmp_path / "cell.png").stat().st_size > 0
