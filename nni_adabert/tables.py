"""Markdown tables: what the CLI prints and the benchmarks write (readable in a terminal too)."""

from __future__ import annotations

import statistics


def format_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (readable in a terminal too)."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def format_mean_std(values: list[float]) -> str:
    """Percentages of repeated runs as ``mean ± std (n=...)``; one value alone; none: ``""``."""
    if len(values) <= 1:
        return "".join(f"{v:.2f}" for v in values)
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def format_transfer_table(table: dict[str, dict[str, list[float]]], row_name: str = "structure",
                          tasks: list[str] | None = None) -> str:
    """The task x structure table of the paper's Table 3: ``table[structure][task]`` lists the
    dev metric (in %) of each run; a cell with several runs shows mean ± std (n). Rows sorted
    by name, ``"random"`` last; columns are ``tasks`` (default: every task, sorted)."""
    tasks = tasks or sorted({task for row in table.values() for task in row})
    names = sorted(n for n in table if n != "random") + (["random"] if "random" in table else [])
    lines = [f"| {row_name} | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name in names:
        cells = [format_mean_std(table[name].get(task, [])) for task in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
