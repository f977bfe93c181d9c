"""The task x structure table (paper Table 3) from a retrain experiment's NNI results.

Reads a running (or resumed / viewed) experiment's trials through NNI's REST API:
each trial's ``arch`` and ``task`` parameters and its final ``default`` metric (the
task's main dev metric). Rows: each searched structure (named by the task it was
searched on) and "random" (mean ± std over the random seeds); columns: the tasks.

    nnictl create --config trials/config_retrain.yml --port 8080
    python trials/transfer_table.py --port 8080 [--output runs/nni/transfer.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

from nni_adabert.tables import format_transfer_table


def fetch(port: int, route: str, host: str = "127.0.0.1"):
    with urllib.request.urlopen(f"http://{host}:{port}/api/v1/nni/{route}", timeout=30) as r:
        return json.loads(r.read())


def structure_name(arch: str) -> str:
    """'random' for random:<seed>; else the task the architecture was searched on (its JSON)."""
    if arch.startswith("random:"):
        return "random"
    path = Path(arch)
    path = path / "architecture.json" if path.is_dir() else path
    try:
        doc = json.loads(path.read_text())
        searched_on = (doc.get("retrain") or {}).get("searched_on") or doc.get("task")
        return f"searched on {searched_on}" if searched_on else arch
    except (OSError, ValueError):
        return arch


def collect(trials: list[dict]) -> dict[str, dict[str, list[float]]]:
    """structure -> task -> [final default metric of each successful trial]."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if t.get("status") != "SUCCEEDED" or not t.get("finalMetricData"):
            continue
        params = json.loads(t["hyperParameters"][0])["parameters"]
        value = json.loads(t["finalMetricData"][0]["data"])
        value = json.loads(value) if isinstance(value, str) else value
        metric = value["default"] if isinstance(value, dict) else float(value)
        table[structure_name(str(params.get("arch")))][str(params.get("task", "SST-2"))].append(100 * metric)
    return table


format_table = format_transfer_table  # the table logic lives in the library (bench/adaptiveness.py too)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8080, help="the experiment's web UI / REST port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--output", default=None, help="also write the Markdown table here")
    args = p.parse_args(argv)
    try:
        trials = fetch(args.port, "trial-jobs", args.host)
    except OSError as exc:
        print(f"transfer_table: error: no NNI experiment answers on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    table = format_table(collect(trials))
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
