"""The budget sweep's verdict (bench/budget_sweep.py) and its picture (plots.plot_accuracy_vs_cost)."""

import json
import sys
from pathlib import Path

import matplotlib
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import budget_sweep  # noqa: E402

from nni_adabert.plots import plot_accuracy_vs_cost  # noqa: E402

CONV_CELL = {"edge_2_0": "std_conv_3", "edge_2_1": "zero", "edge_3_0": "max_pool_3", "edge_3_1": "dil_conv_5",
             "edge_3_2": "skip", "edge_4_0": "zero", "edge_4_1": "zero", "edge_4_2": "avg_pool_3",
             "edge_4_3": "zero", "depth": 2}
FREE_CELL = {**CONV_CELL, "edge_2_0": "zero", "edge_3_1": "skip"}


def student(kind, budget, params, speedup, value, cell=CONV_CELL):
    """A sweep entry as bench/budget_sweep.py makes it (value: dev metric in points)."""
    return {"budget": {"kind": kind, "value": budget, "name": f"{kind}{budget}"}, "params": params,
            "speedup_over_bert_base": speedup, "value": value,
            "parametric_edges": budget_sweep.parametric_edges(cell, 128)}


def test_parametric_edges_counts_the_ops_with_weights():
    assert budget_sweep.parametric_edges(CONV_CELL, 128) == 2
    assert budget_sweep.parametric_edges(FREE_CELL, 128) == 0


def sweep():
    """Three students that meet every term against a teacher at 88.9."""
    return [student("params", 6_400_000, 6_100_000, 70.0, 88.3),
            student("params", 5_000_000, 4_700_000, 90.0, 87.9),
            student("speedup", 100.0, 4_300_000, 108.0, 87.2)]


def test_a_sweep_that_meets_every_term():
    students = sweep()
    f = budget_sweep.findings(students, 88.9, "accuracy", 0.15)
    assert f["met"] and f["within_budget"] and f["non_increasing"] and f["parametric"]
    assert f["smallest_gap"] == pytest.approx(88.9 - 87.2) and f["fast_gap"] == pytest.approx(88.9 - 87.2)
    assert budget_sweep.off_budget(students[0]) == pytest.approx(6.1 / 6.4 - 1)
    assert budget_sweep.off_budget(students[2]) == pytest.approx(0.08)  # the measured speedup against its budget


@pytest.mark.parametrize("change, term", [
    ({1: {"params": 5_900_000}}, "within_budget"),         # 18% over its 5.0M budget
    ({1: {"value": 88.6}}, "non_increasing"),               # the smaller student more accurate than the larger
    ({2: {"speedup_over_bert_base": 99.0}}, "fast_gap"),    # nothing at >= 100x
    ({2: {"parametric_edges": 0}}, "parametric"),           # a parameter-free cell
])
def test_each_term_can_fail_the_sweep(change, term):
    students = sweep()
    for index, fields in change.items():
        students[index].update(fields)
    f = budget_sweep.findings(students, 88.9, "accuracy", 0.15)
    assert not f["met"]
    assert f[term] in (False, None)


def test_the_smallest_must_stay_within_4_points_and_two_students_are_not_a_sweep():
    students = [student("params", 6_400_000, 6_100_000, 120.0, 88.3),
                student("params", 4_500_000, 4_400_000, 150.0, 84.5)]
    f = budget_sweep.findings(students, 88.9, "accuracy", 0.15)
    assert f["smallest_gap"] == pytest.approx(4.4) and not f["met"]


def test_with_several_seeds_the_order_and_the_gaps_compare_each_budgets_mean():
    """Two seeds a budget: 5.0M's seed 0 (87.8) beats 6.4M's seed 1 (87.0), a draw an order over single
    students would count, but the means (87.5 >= 87.35 >= 86.9) are ordered; every student must still be
    within its budget and keep weights."""
    students = [{**s, "seed": seed, "value": value} for s, seeds in zip(sweep(), ((88.0, 87.0), (87.8, 86.9),
                                                                                  (87.2, 86.6)))
                for seed, value in enumerate(seeds)]
    points = budget_sweep.budget_means(students)
    assert [p["value"] for p in points] == pytest.approx([87.5, 87.35, 86.9]) and points[0]["seeds"] == [0, 1]
    f = budget_sweep.findings(students, 88.9, "accuracy", 0.15)
    assert f["met"] and f["non_increasing"]
    assert f["smallest_gap"] == pytest.approx(88.9 - 86.9) and f["fast_gap"] == pytest.approx(88.9 - 86.9)
    students[3]["value"] = 88.9                   # 5.0M's mean now 88.35, above 6.4M's 87.5
    assert not budget_sweep.findings(students, 88.9, "accuracy", 0.15)["non_increasing"]
    students[3]["value"], students[5]["parametric_edges"] = 86.9, 0  # one seed's cell without weights fails it
    assert not budget_sweep.findings(students, 88.9, "accuracy", 0.15)["parametric"]


def test_budgets_become_search_flags():
    args = budget_sweep.parse_args(["--name", "x", "--max-params", "6400000", "--min-speedup", "100"])
    assert [b["flags"] for b in budget_sweep.budgets(args)] == [["--max-params", "6400000"], ["--min-speedup", "100"]]
    assert args.seeds == [0]
    assert budget_sweep.parse_args(["--name", "x", "--min-speedup", "100", "--seeds", "0", "1"]).seeds == [0, 1]
    assert budget_sweep.parse_args(["--name", "x", "--min-speedup", "100", "--seed", "1"]).seeds == [1]
    with pytest.raises(SystemExit):
        budget_sweep.parse_args(["--name", "x"])


def test_the_picture_has_our_points_on_both_panels_and_published_speedups_only_where_given(tmp_path, monkeypatch):
    drawn = []
    scatter = matplotlib.axes.Axes.scatter

    def record(self, x, y, *args, **kwargs):
        drawn.append((self.get_xscale(), list(x)))
        return scatter(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", record)
    ours = [{"label": "a", "params": 6.1e6, "speedup": 70.0, "value": 88.3},
            {"label": "b", "params": 4.3e6, "speedup": 108.0, "value": 87.2}]
    plot_accuracy_vs_cost(ours, budget_sweep.REFERENCES, tmp_path / "tradeoff.png", "sweep", teacher_value=88.9)
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    published_params, published_speed = drawn  # our points are a line plot, the published ones scattered
    assert len(published_params[1]) == len(budget_sweep.REFERENCES)
    assert published_speed[1] == [29.3]  # only the paper's Table 1 student has a published speedup


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_with_several_seeds_the_picture_joins_the_means_and_marks_each_seed(tmp_path, monkeypatch, seeds):
    drawn = []
    line_plot = matplotlib.axes.Axes.plot

    def record(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x), list(y)))
        return line_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    students = [{**s, "seed": seed, "value": s["value"] - seed} for s in sweep() for seed in seeds]
    budget_sweep.plot_tradeoff({"students": students, "task": "SST-2", "metric": "accuracy"}, 88.9,
                               tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    ours = [d for d in drawn if d[0] and d[0].startswith("ours")]
    if len(seeds) == 1:  # one line a panel through the students themselves
        assert [d[0] for d in ours] == ["ours", "ours"]
        assert sorted(ours[0][2]) == sorted(s["value"] for s in students)
    else:                # per panel: the means joined (sorted by params), then every student hollow
        assert [d[0] for d in ours] == ["ours (mean of seeds)", "ours, each seed"] * 2
        assert ours[0][2] == pytest.approx([86.7, 87.4, 87.8])
        assert sorted(ours[1][2]) == sorted(s["value"] for s in students) and len(ours[3][1]) == 6
        assert ours[3][1] == [s["speedup_over_bert_base"] for s in students]


def test_the_result_page_lists_every_student_by_size_with_the_verdict():
    """The page main() writes after hours of runs: built from the same entries (a formatting error here
    would otherwise surface only at the end of a sweep)."""
    students = sweep()
    for s, depth in zip(students, (2, 3, 1)):
        command = {"command": "nni-adabert ...", "minutes": 1.0}
        s.update(seed=0, search=command, retrain=command, depth=depth, params_without_embedding=s["params"] - 3_906_816,
                 speedup_over_teacher=s["speedup_over_bert_base"] / 7, searched={"accuracy": 0.79},
                 dev={"accuracy": s["value"] / 100})
    result = {"task": "SST-2", "command": "bench/budget_sweep.py ...", "cpu": "cpu", "machine": "m",
              "metric": "accuracy", "teacher": {"dev": {"accuracy": 0.889}, "command": "nni-adabert teacher",
                                                 "minutes": 3.0},
              "students": students, "findings": budget_sweep.findings(students, 88.9, "accuracy", 0.15),
              "tolerance": 0.15}
    page = budget_sweep.markdown(result)
    rows = [line for line in page.splitlines() if line.startswith("| ≤") or line.startswith("| ≥")]
    assert [row.split(" | ")[0] for row in rows] == ["| ≤6.4M", "| ≤5.0M", "| ≥100x"]  # largest first
    assert "| 4,300,000 | 393,184 | +8.0% | 2 | 79.00 | 87.20 | 1.70 | 108.0x |" in rows[2]
    assert "**All met: yes.**" in page and page.count("nni-adabert ...") == 6


def test_a_finished_teacher_run_is_used_not_built(runs, tmp_path, monkeypatch):
    """--teacher-run: every student searches and retrains on that run's store; no teacher is built."""
    teachers = []

    def steps(teacher, runs_dir, name, seed, flags, out):
        teachers.append(teacher)
        command = {"command": f"nni-adabert search {' '.join(flags)}", "minutes": 1.0}
        return {"seed": seed, "search": command, "retrain": command, "architecture": CONV_CELL, "embed_dim": 128,
                "searched": {"accuracy": 0.8}, "dir": str(runs_dir / name)}

    def measure(store, students, threads):
        for s, params in zip(students, (6_300_000, 5_300_000, 4_600_000)):
            s.update(params=params, params_without_embedding=params - 3_906_816, depth=2, dev={"accuracy": 0.85},
                     speedup_over_bert_base=110.0, speedup_over_teacher=10.0)
        return {"accuracy": 0.87}

    monkeypatch.setattr(budget_sweep, "teacher_step", lambda *args: pytest.fail("built a teacher"))
    monkeypatch.setattr(budget_sweep, "student_steps", steps)
    monkeypatch.setattr(budget_sweep, "measure", measure)
    monkeypatch.setattr(budget_sweep, "results_dir", lambda benchmark, name: tmp_path)
    assert budget_sweep.main(["--teacher-run", str(runs / "SST-2"), "--max-params", "6400000", "5400000",
                              "4700000", "--name", "quick", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert teachers == [runs / "SST-2"] * 3
    page = (tmp_path / "result.md").read_text()
    assert f"# the finished teacher run {runs / 'SST-2'}" in page and "Teacher dev accuracy: 87.00" in page


def test_two_seeds_make_a_student_per_budget_and_seed_and_the_page_shows_the_means(runs, tmp_path, monkeypatch):
    calls = []
    _, _, student_steps = _steps_recording(calls, {})

    def measure(store, students, threads):
        for s, (params, value) in zip(students, ((6_300_000, 0.88), (6_200_000, 0.86), (5_300_000, 0.865),
                                                 (5_200_000, 0.855), (4_600_000, 0.85), (4_500_000, 0.84))):
            s.update(params=params, params_without_embedding=params - 3_906_816, depth=2, dev={"accuracy": value},
                     speedup_over_bert_base=110.0, speedup_over_teacher=10.0)
        return {"accuracy": 0.89}

    monkeypatch.setattr(budget_sweep, "student_steps", student_steps)
    monkeypatch.setattr(budget_sweep, "measure", measure)
    monkeypatch.setattr(budget_sweep, "results_dir", lambda benchmark, name: tmp_path)
    assert budget_sweep.main(["--teacher-run", str(runs / "SST-2"), "--max-params", "6400000", "5400000", "4700000",
                              "--seeds", "0", "1", "--name", "quick", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert [c[1] for c in calls if c[0] == "search"] == ["params6400000-seed0", "params6400000-seed1",
                                                         "params5400000-seed0", "params5400000-seed1",
                                                         "params4700000-seed0", "params4700000-seed1"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["findings"]["non_increasing"]   # means 87.0 >= 86.0 >= 84.5, though 6.4M's seed 1 < 5.4M's seed 0
    assert result["findings"]["smallest_gap"] == pytest.approx(89.0 - 84.5)
    page = (tmp_path / "result.md").read_text()
    assert "| ≤6.4M, seed 1 | 2 | 6,200,000 |" in page
    assert "| ≤4.7M | 0, 1 | 4,550,000 | 84.50 | 4.50 | 110.0x |" in page
    assert "non-increasing as the budgets' means get smaller: yes" in page


def _steps_recording(calls, archs):
    """Stand-ins for pipeline's search_step and retrain_step: record (step, name, flags), leave the search phase
    a real `search` leaves, and export ``archs[name]`` (default: CONV_CELL)."""
    def search_step(teacher, runs_dir, name, seed, flags, out):
        calls.append(("search", name, flags))
        if not name.endswith("-argmax"):
            (runs_dir / f"search-{name}" / "search" / "checkpoints").mkdir(parents=True)
            (runs_dir / f"search-{name}" / "search" / "checkpoints" / "last.ckpt").write_text("weights")
        command = {"command": f"nni-adabert search {' '.join(flags)}", "minutes": 1.0}
        return {"seed": seed, "search": command, "architecture": archs.get(name, CONV_CELL), "embed_dim": 128,
                "searched": {"accuracy": 0.8}}

    def retrain_step(teacher, runs_dir, name, seed, out):
        calls.append(("retrain", name, None))
        return {"retrain": {"command": "nni-adabert retrain", "minutes": 1.0}, "dir": str(runs_dir / f"retrain-{name}")}

    def student_steps(teacher, runs_dir, name, seed, flags, out):
        return {**search_step(teacher, runs_dir, name, seed, flags, out),
                **retrain_step(teacher, runs_dir, name, seed, out)}
    return search_step, retrain_step, student_steps


def _sweep_with_recorded_steps(monkeypatch, tmp_path, runs, archs, values):
    calls, measured = [], []

    def measure(store, students, threads):
        measured.extend(s["dir"] for s in students)
        for s, value in zip(students, values):
            s.update(params=4_400_000, params_without_embedding=493_184, depth=3, dev={"accuracy": value},
                     speedup_over_bert_base=109.0, speedup_over_teacher=15.0)
        return {"accuracy": 0.87}

    search_step, retrain_step, student_steps = _steps_recording(calls, archs)
    monkeypatch.setattr(budget_sweep, "search_step", search_step)
    monkeypatch.setattr(budget_sweep, "retrain_step", retrain_step)
    monkeypatch.setattr(budget_sweep, "student_steps", student_steps)
    monkeypatch.setattr(budget_sweep, "measure", measure)
    monkeypatch.setattr(budget_sweep, "results_dir", lambda benchmark, name: tmp_path)
    assert budget_sweep.main(["--teacher-run", str(runs / "SST-2"), "--min-speedup", "100", "--name", "quick",
                              "--runs-dir", str(tmp_path / "runs"), "--also-without-candidates"]) == 0
    return calls, measured


def test_each_search_is_also_exported_without_candidates_from_a_copy_of_its_search_phase(runs, tmp_path,
                                                                                         monkeypatch):
    """--also-without-candidates: per budget a second `search --candidates 0` in its own directory, started from
    a copy of the first search's finished Lightning run (so only the export runs), retrained and measured with
    the others; the page shows what the pick among candidates gained."""
    other = {**CONV_CELL, "edge_2_0": "max_pool_3"}  # another op on one edge: another child
    calls, measured = _sweep_with_recorded_steps(monkeypatch, tmp_path, runs, {"speedup100-seed0-argmax": other},
                                                 (0.86, 0.84))
    assert calls == [("search", "speedup100-seed0", ["--min-speedup", "100"]),
                     ("retrain", "speedup100-seed0", None),
                     ("search", "speedup100-seed0-argmax", ["--min-speedup", "100", "--candidates", "0"]),
                     ("retrain", "speedup100-seed0-argmax", None)]
    runs_dir = tmp_path / "runs"
    copied = runs_dir / "search-speedup100-seed0-argmax" / "search" / "checkpoints" / "last.ckpt"
    assert copied.read_text() == "weights"
    assert len(measured) == 2  # the argmax export is timed in the same round-robin
    page = (tmp_path / "result.md").read_text()
    assert "| ≥100x | 3 | 4,400,000 | 80.00 | 84.00 | +2.00 | 109.0x |" in page
    assert "findings" in json.loads((tmp_path / "result.json").read_text())


def test_an_export_without_candidates_that_is_the_picked_child_is_not_retrained_again(runs, tmp_path, monkeypatch):
    """When --candidates 0 exports the child the candidates picked, its retraining and measurements are the
    pick's: no second retraining, no second timing, a gain of 0 on the page."""
    calls, measured = _sweep_with_recorded_steps(monkeypatch, tmp_path, runs, {}, (0.86,))
    assert [c[:2] for c in calls] == [("search", "speedup100-seed0"), ("retrain", "speedup100-seed0"),
                                      ("search", "speedup100-seed0-argmax")]
    assert measured == [str(tmp_path / "runs" / "retrain-speedup100-seed0")]
    page = (tmp_path / "result.md").read_text()
    assert "| ≥100x (the same child: not retrained again) | 3 | 4,400,000 | 80.00 | 86.00 | +0.00 | 109.0x |" in page
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["argmax_exports"][0]["same_child"] is True and doc["argmax_exports"][0]["value"] == 86.0
