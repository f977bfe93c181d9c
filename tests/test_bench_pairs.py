"""bench/pairs.py end to end on the tiny MRPC teacher run: a store-only lever (no augmentation) and the
random-cells row and the retraining-only levers (no final-logit KD, Table 4 on the default cells), down to the
result page that compares searched with random and augmented with not."""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import pairs  # noqa: E402
from nni_adabert.cli import build_parser  # noqa: E402
from nni_adabert.config import RetrainConfig, SearchConfig, from_options  # noqa: E402


def test_the_cause_table_runs_each_lever_and_compares_searched_with_random(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(pairs, "results_dir", lambda benchmark, name: common.results_dir(
        benchmark, name, root=tmp_path / "results"))
    argv = ["--teacher-run", str(runs / "MRPC"), "--data", str(runs / "glue"), "--levers", "copies", "random",
            "no-final-kd", "table4-cells", "--copies", "0", "--seeds", "0", "--random-seeds", "0", "1",
            "--runs-dir", str(tmp_path / "runs"), "--name", "tiny"]
    assert pairs.main(argv) == 0
    result = json.loads((tmp_path / "results" / "pairs" / "tiny" / "result.json").read_text())
    # The same command again finds every run finished: the same rows, and the page keeps the first timings.
    assert pairs.main(argv) == 0
    again = json.loads((tmp_path / "results" / "pairs" / "tiny" / "result.json").read_text())
    assert [(r["row"], r["dev"], r["search"], r["retrain"]) for r in again["runs"]] == \
        [(r["row"], r["dev"], r["search"], r["retrain"]) for r in result["runs"]]
    assert again["stores_built"] == result["stores_built"]
    # A run whose directory is gone (another machine) keeps the row the page recorded; it is not run again.
    shutil.rmtree(tmp_path / "runs" / "random-cells" / "retrain-random1")
    assert pairs.main(argv) == 0
    kept = json.loads((tmp_path / "results" / "pairs" / "tiny" / "result.json").read_text())
    assert [(r["row"], r["dev"], r.get("recorded", False)) for r in kept["runs"]] == \
        [(r["row"], r["dev"], r["arch"] == "random:1") for r in result["runs"]]
    assert not (tmp_path / "runs" / "random-cells" / "retrain-random1").exists()
    assert "not run by this run of the command: random cells, random:1." in \
        (tmp_path / "results" / "pairs" / "tiny" / "result.md").read_text()
    out = tmp_path / "results" / "pairs" / "tiny"
    other_teacher = {**kept["teacher_dev"], "f1": kept["teacher_dev"]["f1"] + 0.01}
    assert common.recorded_runs(out, teacher_dev=kept["teacher_dev"], base_copies=1)
    assert not common.recorded_runs(out, teacher_dev=other_teacher, base_copies=1)
    assert not common.recorded_runs(out, teacher_dev=None, base_copies=1)  # unknown: nothing kept
    # A run of a store whose teacher changed (another weak teacher, say) is not kept.
    recorded = common.recorded_runs(out, teacher_dev=kept["teacher_dev"], base_copies=1)
    random1_argv = kept["runs"][2]["retrain"]["command"].split()[1:]
    assert common.recorded_run(tmp_path / "gone", random1_argv, recorded, teacher_dev=kept["teacher_dev"])
    assert common.recorded_run(tmp_path / "gone", random1_argv, recorded, teacher_dev=other_teacher) is None
    # The default row kept, its search gone with it, and a row that retrains its cells not recorded: that row
    # runs the default row's search again (the same command) before its retraining.
    shutil.rmtree(tmp_path / "runs" / "default")
    shutil.rmtree(tmp_path / "runs" / "no-final-KD")
    page = json.loads((out / "result.json").read_text())
    page["runs"] = [r for r in page["runs"] if r["row"] != "no final-logit KD"]
    (out / "result.json").write_text(json.dumps(page))
    assert pairs.main(argv) == 0
    rerun = {r["row"]: r for r in json.loads((out / "result.json").read_text())["runs"]}
    assert rerun["default"].get("recorded") and not rerun["no final-logit KD"].get("recorded")
    assert rerun["no final-logit KD"]["search"]["command"] == result["runs"][0]["search"]["command"]
    assert (tmp_path / "runs" / "default" / "search-seed0" / "architecture.json").is_file()
    # A store whose runs are all kept from the page is not built again (minutes each on the full data).
    for r in result["runs"]:
        if r["copies"] == 0:
            shutil.rmtree(r["retrain"]["command"].split("--output-dir ")[1].split()[0])
    shutil.rmtree(tmp_path / "runs" / "teacher-default-aug0")
    assert pairs.main(argv) == 0
    assert not (tmp_path / "runs" / "teacher-default-aug0").exists()
    final = json.loads((out / "result.json").read_text())
    assert [(r["row"], r.get("recorded", False)) for r in final["runs"] if r["copies"] == 0] == [
        ("0 copies", True), ("Base-KD on the default cells", True), ("+ Probe on the default cells", True)]
    assert final["stores_built"] == {}
    rows = [(r["row"], r["arch"].rsplit("/", 1)[-1], r["copies"]) for r in result["runs"]]
    assert rows == [("default", "search-seed0", 1), ("random cells", "random:0", 1), ("random cells", "random:1", 1),
                    ("0 copies", "search-seed0", 0), ("no final-logit KD", "search-seed0", 1),
                    ("Base-KD on the default cells", "search-seed0", 0),
                    ("+ Probe on the default cells", "search-seed0", 0),
                    ("+ DA on the default cells", "search-seed0", 1)]
    # Without the final-logit KD term only the retraining changes: the default row's cells, not a new search.
    no_kd, default = result["runs"][4], result["runs"][0]
    assert no_kd["search"] is None and no_kd["arch"] == default["arch"]
    assert "--no-final-kd" in no_kd["retrain"]["command"]
    # Table 4 on the default cells: no search, the default row's child, each row's store and loss flags.
    cells = result["runs"][5:]
    assert all(r["search"] is None and r["arch"] == default["arch"] for r in cells)
    assert all(r["architecture"] == default["architecture"] for r in cells)
    assert [r["teacher_run"] == default["teacher_run"] for r in cells] == [False, False, True]
    assert ["--no-probe-kd" in r["retrain"]["command"] for r in cells] == [True, False, False]
    assert all("--gamma 1" in r["retrain"]["command"] for r in cells)
    assert len({r["retrain"]["command"].split("--output-dir ")[1].split()[0] for r in cells}) == 3
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
    main_table, table4 = page.split("## Table 4 on one structure: the default row's cells")
    assert "on the default cells" not in main_table and "## The paper's Table 4" not in page
    labels = [line.split(" | ")[0].lstrip("| ") for line in table4.splitlines() if line.startswith("| Base")
              or line.startswith("| +")]
    assert labels == ["Base-KD", "+ Probe", "+ DA", "+ L_CE (All): the default row"]


def test_table4_rows_add_one_knowledge_term_each():
    """The Table 4 rows' flags give the paper's losses: Base-KD the final-logit term only with γ = 1,
    + Probe adds the probes, + DA the augmented rows (store), the default row L_CE (γ = 0.8)."""
    def configs(search, retrain):
        parser = build_parser()
        return (from_options(SearchConfig, parser.parse_args(["search", "--teacher", "t", "--output-dir", "o",
                                                              *search])),
                from_options(RetrainConfig, parser.parse_args(["retrain", "--teacher", "t", "--arch", "a",
                                                               "--output-dir", "o", *retrain])))

    losses = [(name, copies, [(c.probe_kd, c.final_kd, c.gamma) for c in configs(search, retrain)])
              for name, copies, search, retrain, _ in pairs.TABLE4]
    assert losses == [("Base-KD", 0, [(False, True, 1.0), (False, True, 1.0)]),
                      ("+ Probe", 0, [(True, True, 1.0), (True, True, 1.0)]),
                      ("+ DA", None, [(True, True, 1.0), (True, True, 1.0)])]
    default = configs([], [])
    assert [(c.probe_kd, c.gamma) for c in default] == [(True, 0.8), (True, 0.8)]


def test_table4_section_lists_the_rows_in_the_papers_order_with_its_numbers():
    def run(row, f1, copies):
        return {"row": row, "dev": {"f1": f1, "accuracy": f1 - 0.001}, "teacher_dev": {"f1": 0.86, "accuracy": 0.8},
                "params": 1000, "depth": 2, "space": "matching", "copies": copies, "search": None,
                "retrain": {"command": "nni-adabert retrain", "minutes": 1.0}}

    runs = [run("default", 0.84, 4), run("Base-KD", 0.77, 0), run("+ Probe", 0.79, 0), run("+ DA", 0.83, 4)]
    result = {"task": "MRPC", "command": "bench/pairs.py", "cpu": "cpu", "machine": "m", "metrics": ["f1", "accuracy"],
              "majority": {"f1": 0.81, "accuracy": 0.68}, "settings": {"search_augmented_limit": 20000},
              "stores_built": {}, "runs": runs, "means": pairs.row_means(runs, ["f1", "accuracy"])}
    page = pairs.markdown(result)
    main_table, table4 = page.split("## The paper's Table 4")
    assert "| Base-KD |" not in main_table and "| default |" in main_table
    rows = [line.split(" | ") for line in table4.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0].lstrip("| ") for r in rows] == ["row", "Base-KD", "+ Probe", "+ DA", "+ L_CE (All): the default row"]
    # Each row: its own runs' F1 and accuracy, then the paper's F1; the last row is the default row's.
    assert [(r[4], r[5], r[-1]) for r in rows[1:]] == [("77.00 (77.00)", "76.90 (76.90)", "77.2 |"),
                                                       ("79.00 (79.00)", "78.90 (78.90)", "78.7 |"),
                                                       ("83.00 (83.00)", "82.90 (82.90)", "83.9 |"),
                                                       ("84.00 (84.00)", "83.90 (83.90)", "84.7 |")]
