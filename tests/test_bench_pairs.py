"""bench/pairs.py end to end on the tiny MRPC teacher run: a store-only lever (no augmentation) and the
random-cells row and the retraining-only lever (no final-logit KD), down to the result page that compares
searched with random and augmented with not."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import pairs  # noqa: E402


def test_the_cause_table_runs_each_lever_and_compares_searched_with_random(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(pairs, "results_dir", lambda benchmark, name: common.results_dir(
        benchmark, name, root=tmp_path / "results"))
    assert pairs.main(["--teacher-run", str(runs / "MRPC"), "--data", str(runs / "glue"), "--levers", "copies",
                       "random", "no-final-kd", "--copies", "0", "--seeds", "0", "--random-seeds", "0", "1",
                       "--runs-dir", str(tmp_path / "runs"), "--name", "tiny"]) == 0
    result = json.loads((tmp_path / "results" / "pairs" / "tiny" / "result.json").read_text())
    rows = [(r["row"], r["arch"].rsplit("/", 1)[-1], r["copies"]) for r in result["runs"]]
    assert rows == [("default", "search-seed0", 1), ("random cells", "random:0", 1), ("random cells", "random:1", 1),
                    ("0 copies", "search-seed0", 0), ("no final-logit KD", "search-seed0", 1)]
    # Without the final-logit KD term only the retraining changes: the default row's cells, not a new search.
    no_kd, default = result["runs"][-1], result["runs"][0]
    assert no_kd["search"] is None and no_kd["arch"] == default["arch"]
    assert "--no-final-kd" in no_kd["retrain"]["command"]
    assert result["means"]["default"]["f1"] == 100 * default["dev"]["f1"]
    random_runs = [r for r in result["runs"] if r["row"] == "random cells"]
    assert all(r["search"] is None and r["space"] == "matching" for r in random_runs)
    assert random_runs[0]["architecture"] != random_runs[1]["architecture"]  # two seeds, two structures
    # The store without augmentation is a store of its own, of the same teacher.
    assert set(result["stores_built"]) == {"teacher-default-aug0"}
    page = (tmp_path / "results" / "pairs" / "tiny" / "result.md").read_text()
    default_f1 = 100 * result["runs"][0]["dev"]["f1"]
    random_f1 = sum(100 * r["dev"]["f1"] for r in random_runs) / 2
    assert f"Searched (the default row) against random cells of the same space, f1: {default_f1 - random_f1:+.2f}" \
        in page
    assert page.count("--arch random:") == 2
    no_aug_f1 = 100 * result["runs"][3]["dev"]["f1"]
    assert f"Data augmentation (1 copy against none), f1: {default_f1 - no_aug_f1:+.2f}" in page
