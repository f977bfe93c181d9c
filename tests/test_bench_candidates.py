"""bench/candidates.py end to end on the tiny MRPC teacher run: held-out scores of random children
against their retrainings' dev metrics, and the rank correlation between them."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import candidates  # noqa: E402
import common  # noqa: E402


def test_ranks_share_ties_and_spearman_follows_order():
    assert candidates.ranks([0.3, 0.1, 0.3, 0.2]) == [3.5, 1.0, 3.5, 2.0]
    assert candidates.spearman([1, 2, 3], [10, 20, 40]) == pytest.approx(1.0)
    assert candidates.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_the_benchmark_scores_and_retrains_each_child(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(candidates, "results_dir", lambda benchmark, name: common.results_dir(
        benchmark, name, root=tmp_path / "results"))
    assert candidates.main(["--teacher-run", str(runs / "MRPC"), "--random-seeds", "0", "1", "2",
                            "--runs-dir", str(tmp_path / "runs"), "--name", "tiny"]) == 0
    result = json.loads((tmp_path / "results" / "candidates" / "tiny" / "result.json").read_text())
    children = result["children"]
    assert [c["arch_name"] for c in children] == ["random:0", "random:1", "random:2"]
    assert all(0 <= c["held_out"]["f1"] <= 1 and 0 <= c["dev"]["accuracy"] <= 1 for c in children)
    assert -1 <= result["spearman_task_score"] <= 1
    best = max(children, key=lambda c: c["held_out"]["f1"] + c["held_out"]["accuracy"])
    assert result["picked"] == best["arch_name"] and result["picked_dev"] == best["dev"]
    page = (tmp_path / "results" / "candidates" / "tiny" / "result.md").read_text()
    assert "| random:2 |" in page and "Spearman" in page
