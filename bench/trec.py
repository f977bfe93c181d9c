"""TREC question classification (real, 6 classes) as a user's own data: the default pipeline.

    .venv/bin/python bench/trec.py --max-params 6400000 --seeds 0 --name TREC-default

Converts the TREC files (``$TREC_DIR``, default ../shared/data/trec: ``COARSE:fine question`` per
line) to CSV files with columns ``question`` and ``coarse`` and a task file naming them, as a user
with their own data would, then runs ``bench/pipeline.py`` on that task file: ``teacher`` (the
5,444 training questions; dev = the 499 test questions, the usual TREC evaluation set) ->
``search`` -> ``retrain`` per seed -> the speed of each student. Results:
bench/results/pipeline/<name>/.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from common import ROOT
import pipeline

TREC_DIR = Path(os.environ.get("TREC_DIR", ROOT.parent / "shared" / "data" / "trec"))
FILES = {"train": "train_5500.label", "test": "TREC_10.label"}


def write_task(trec_dir: Path, out: Path) -> Path:
    """``out/{train,test}.csv`` and ``out/trec.yaml`` from the TREC files; returns the task file."""
    out.mkdir(parents=True, exist_ok=True)
    for split, name in FILES.items():
        lines = (trec_dir / name).read_bytes().decode("utf-8", errors="replace").splitlines()
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["question", "coarse"])
            for line in lines:
                label, question = line.split(" ", 1)
                writer.writerow([question, label.split(":")[0]])
    task = out / "trec.yaml"
    task.write_text("name: TREC\ntrain: train.csv\ndev: test.csv\ntext_column: question\nlabel_column: coarse\n")
    return task


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trec-dir", default=str(TREC_DIR))
    p.add_argument("--name", default="TREC-default")
    p.add_argument("--runs-dir", default=None, help="default: runs/bench/pipeline/<name>")
    args, rest = p.parse_known_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "pipeline" / args.name
    task = write_task(Path(args.trec_dir), runs / "data")
    return pipeline.main(["--task", str(task), "--name", args.name, "--runs-dir", str(runs), *rest])


if __name__ == "__main__":
    raise SystemExit(main())
