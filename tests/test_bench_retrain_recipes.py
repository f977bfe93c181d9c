"""bench/retrain_recipes.py end to end on the tiny SST-2 teacher run: one fixed child retrained by the defaults,
by a row of its own flags and on a store of other copies, each run's dev curve read back from its log, and the
page that compares the rows with the teacher."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import retrain_recipes  # noqa: E402

ARCH = Path(__file__).resolve().parents[1] / "bench" / "results" / "search" / "SST-2-default-budget6.4M" / \
    "architecture.json"


def test_every_row_retrains_the_same_child_and_the_page_compares_them_with_the_teacher(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(retrain_recipes, "results_dir", lambda benchmark, name: common.results_dir(
        benchmark, name, root=tmp_path / "results"))
    argv = ["--teacher-run", str(runs / "SST-2"), "--data", str(runs / "glue"), "--arch", str(ARCH), "--seeds", "0",
            "--recipes", "default=", "grouped, 2 epochs=--group-by-length --epochs 2", "0 copies=--aug-copies 0",
            "--runs-dir", str(tmp_path / "runs"), "--name", "tiny"]
    assert retrain_recipes.main(argv) == 0
    out = tmp_path / "results" / "retrain-recipes" / "tiny"
    result = json.loads((out / "result.json").read_text())
    assert [(r["row"], r["seed"], r["copies"], r["epochs"]) for r in result["runs"]] == [
        ("default", 0, 1, 3), ("grouped, 2 epochs", 0, 1, 2), ("0 copies", 0, 0, 3)]
    assert "--group-by-length --epochs 2 --seed 0" in result["runs"][1]["retrain"]["command"]
    assert "--teacher " + str(tmp_path / "runs" / "teacher-aug0") in result["runs"][2]["retrain"]["command"]
    assert set(result["stores_built"]) == {"teacher-aug0"}
    child = json.loads(ARCH.read_text())["params"]
    for r in result["runs"]:  # the same child in every row; one dev value per epoch, the last one kept
        assert r["params"] == child
        assert len(r["dev_per_epoch"]) == r["epochs"]
        assert r["dev_per_epoch"][-1] == pytest.approx(r["dev"], abs=1e-6)
    assert result["means"] == {r["row"]: 100 * r["dev"] for r in result["runs"]}
    page = (out / "result.md").read_text()
    teacher, first = 100 * result["teacher_dev"], result["means"]["default"]
    grouped = result["means"]["grouped, 2 epochs"]
    assert f"| grouped, 2 epochs | 0 | {grouped:.2f} | {teacher - grouped:.2f} | {grouped - first:+.2f} |" in page
    assert "`--group-by-length --epochs 2`" in page
    # Again: every run found finished, the same rows, and the page keeps the minutes of the runs that made them.
    assert retrain_recipes.main(argv) == 0
    again = json.loads((out / "result.json").read_text())
    assert [(r["row"], r["dev"], r["retrain"]) for r in again["runs"]] == \
        [(r["row"], r["dev"], r["retrain"]) for r in result["runs"]]

    # Runs gone (another machine): the page's rows stay as recorded, nothing is retrained or rebuilt.
    shutil.rmtree(tmp_path / "runs" / "grouped-2-epochs")
    shutil.rmtree(tmp_path / "runs" / "teacher-aug0")
    shutil.rmtree(tmp_path / "runs" / "0-copies")
    assert retrain_recipes.main(argv) == 0
    kept = json.loads((out / "result.json").read_text())
    assert [(r["row"], r["dev"], r["retrain"], r.get("recorded", False)) for r in kept["runs"]] == \
        [(r["row"], r["dev"], r["retrain"], r["row"] != "default") for r in result["runs"]]
    assert kept["means"] == result["means"] and kept["stores_built"] == {}
    assert not any((tmp_path / "runs" / d).exists() for d in ("grouped-2-epochs", "teacher-aug0", "0-copies"))
    page = (out / "result.md").read_text()
    assert "| grouped, 2 epochs | `--group-by-length --epochs 2` | 1 | 0 (recorded) |" in page
    # A page made with another teacher keeps nothing.
    assert common.recorded_runs(out, teacher_dev=kept["teacher_dev"], base_copies=1) and \
        not common.recorded_runs(out, teacher_dev=kept["teacher_dev"] + 0.01, base_copies=1) and \
        not common.recorded_runs(out, teacher_dev=kept["teacher_dev"], base_copies=4)


def test_a_row_stopped_after_one_seed_is_compared_on_that_seed():
    def run(row, seed, dev):
        return {"row": row, "seed": seed, "dev": dev, "flags": [], "copies": 4, "params": 1, "depth": 2,
                "dev_per_epoch": [dev], "epochs": 1, "retrain": {"command": f"{row} {seed}", "minutes": 1.0}}
    runs = [run("default", 0, 0.8784), run("default", 1, 0.8830), run("hotter", 0, 0.8761), run("more", 0, 0.8800),
            run("more", 1, 0.8900), run("other seed", 2, 0.9)]
    compared = retrain_recipes.against_first_row(runs)
    assert compared["default"] == (0.0, [0, 1])
    assert compared["hotter"][0] == pytest.approx(87.61 - 87.84) and compared["hotter"][1] == [0]
    assert compared["more"][0] == pytest.approx(((88.00 - 87.84) + (89.00 - 88.30)) / 2)
    assert compared["other seed"] == (None, [])
    result = {"task": "SST-2", "command": "c", "cpu": "cpu", "machine": "m", "metric": "accuracy",
              "teacher_dev": 0.8956, "base_copies": 4, "retrain_epochs": 3, "stores_built": {}, "runs": runs,
              "means": retrain_recipes.row_means(runs)}
    page = retrain_recipes.markdown(result)
    # Its own mean (one seed) against the first row's two-seed mean would say -0.46; on seed 0 it is -0.23.
    assert "| hotter | 0 | 87.61 | 1.95 | -0.23 (seed 0) |" in page
    assert "| default | 0, 1 | 88.07 | 1.49 | +0.00 |" in page and "| more | 0, 1 | 88.50 | 1.06 | +0.43 |" in page
    assert "| other seed | 2 | 90.00 | -0.44 | no seed in common |" in page


def test_a_recipe_without_flags_or_a_child_per_seed_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        retrain_recipes.parse_args(["--teacher-run", "t", "--arch", "a", "--recipes", "grouped"])
    assert exit_info.value.code == 2 and "expected NAME=FLAGS" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        retrain_recipes.parse_args(["--teacher-run", "t", "--arch", "a", "--recipes", "more=--aug-copies many"])
    assert exit_info.value.code == 2 and "more: --aug-copies takes a number of copies, got 'many'" in \
        capsys.readouterr().err
    assert retrain_recipes.recipe("8, grouped=--aug-copies 8 --group-by-length") == \
        ("8, grouped", ["--group-by-length"], 8)
    with pytest.raises(SystemExit) as exit_info:
        retrain_recipes.parse_args(["--teacher-run", "t", "--arch", "a", "--seeds", "0", "1"])
    assert exit_info.value.code == 2 and "--arch: expected one child per seed of --seeds (2), got 1" in \
        capsys.readouterr().err
