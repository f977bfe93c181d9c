"""Shared by the benchmark scripts: run a CLI command, record how and where it ran."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GLUE_DIR = os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "data" / "glue"))


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}, {platform.platform()}"


def run_cli(argv: list[str]) -> str:
    """Run ``nni-adabert argv`` in this process; fail loudly; return the command line."""
    from nni_adabert.cli import main

    command = "nni-adabert " + shlex.join(argv)
    print(f"\n$ {command}\n", flush=True)
    if main(argv) != 0:
        sys.exit(f"failed: {command}")
    return command


def write_results(name: str, result: dict, markdown: str) -> None:
    from nni_adabert import atomic

    atomic.write_json(RESULTS / f"{name}.json", result)
    atomic.write_text(RESULTS / f"{name}.md", markdown)
    print(f"wrote {RESULTS / name}.json and .md")
