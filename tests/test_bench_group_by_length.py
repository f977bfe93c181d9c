"""bench/group_by_length.py end to end on the tiny SST-2 teacher run: both batch orders of a retraining
and a search, their padding, and the page that compares them."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import group_by_length  # noqa: E402

ARCH = Path(__file__).resolve().parents[1] / "bench" / "results" / "search" / "SST-2-default-budget6.4M" / \
    "architecture.json"


def test_both_orders_of_a_retraining_and_a_search_are_timed_and_compared(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(group_by_length, "results_dir", lambda benchmark, name: common.results_dir(
        benchmark, name, root=tmp_path / "results"))
    assert group_by_length.main(["--teacher-run", str(runs / "SST-2"), "--arch", str(ARCH),
                                 "--runs-dir", str(tmp_path / "runs"), "--name", "tiny"]) == 0
    out = tmp_path / "results" / "group-by-length" / "tiny"
    result = json.loads((out / "result.json").read_text())
    assert [(r["step"], r["order"]) for r in result["runs"]] == [
        ("retrain", "plain shuffle"), ("retrain", "grouped by length"),
        ("search", "plain shuffle"), ("search", "grouped by length")]
    assert ["--no-group-by-length" in r["command"] for r in result["runs"]] == [True, False, True, False]
    # The retrainings train the given architecture. Padding: never below the real tokens; with two batches
    # a group is one batch, so grouping pads as much as a plain shuffle (tests/test_data.py: larger).
    assert result["runs"][0]["params"] == result["runs"][1]["params"] == json.loads(ARCH.read_text())["params"]
    padded = result["padded_tokens"]
    for step, real in [("retrain", result["real_tokens"]), ("search", result["search_real_tokens"])]:
        assert real < padded["grouped by length"][step] <= padded["plain shuffle"][step]
    page = (out / "result.md").read_text()
    ratio = result["runs"][0]["seconds"] / result["runs"][1]["seconds"]
    assert f"retrain: {ratio:.2f}x" in page and "| search | grouped by length |" in page
    assert "--max-params 6400000" in result["runs"][2]["command"]  # the default pipeline's search
