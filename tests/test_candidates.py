"""An undecided search, or one under a speed budget, picks its exported child among candidates drawn
from its distributions, each timed (under a speed budget), trained briefly and scored on held-out
train examples (workflows/candidates.py)."""

import dataclasses
import json

import pytest

from nni_adabert.cli import main
from nni_adabert.config import SearchConfig
from nni_adabert.model import cost
from nni_adabert.model.space import StudentConfig, random_arch
from nni_adabert.nas.budget import budgets_of, params_budget
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.candidates import draw_candidates, fast_enough
from nni_adabert.workflows.search import picks_among_candidates
from nni_adabert.workflows.student import fresh_student, student_config
from test_budget import toy_latency_table

CONFIG = StudentConfig(vocab_size=40, num_labels=2, embed_dim=8, k_max=3, max_positions=16)


def uniform_probs(config):
    probs = {label: {op: 1 / len(config.op_names) for op in config.op_names} for label in config.edge_labels}
    return {**probs, "depth": {k: 1 / config.k_max for k in range(1, config.k_max + 1)}}


def test_candidates_are_the_export_first_then_distinct_draws_of_the_distributions():
    probs = uniform_probs(CONFIG)
    first = {**{label: "zero" for label in CONFIG.edge_labels}, "depth": 1}
    drawn = draw_candidates(CONFIG, probs, first, 6, seed=0)
    assert drawn[0] == first and len(drawn) == 6
    assert len({json.dumps(a, sort_keys=True) for a in drawn}) == 6           # no child twice
    assert drawn == draw_candidates(CONFIG, probs, first, 6, seed=0)          # seeded
    assert drawn != draw_candidates(CONFIG, probs, first, 6, seed=1)

    # A decided choice is never drawn otherwise; one-hot everywhere leaves only the export itself.
    one_hot = {label: {op: float(op == "std_conv_3") for op in CONFIG.op_names} for label in CONFIG.edge_labels}
    decided = {**one_hot, "depth": {1: 0.0, 2: 1.0, 3: 0.0}}
    export = {**{label: "std_conv_3" for label in CONFIG.edge_labels}, "depth": 2}
    assert draw_candidates(CONFIG, decided, export, 5, seed=0) == [export]
    depth_open = {**one_hot, "depth": {1: 0.5, 2: 0.5, 3: 0.0}}
    assert sorted(a["depth"] for a in draw_candidates(CONFIG, depth_open, export, 5, seed=0)) == [1, 2]


def test_candidates_respect_the_budget():
    budget = params_budget(CONFIG, max_params=cost.child_params(CONFIG, {**{label: "std_conv_3" for label in
                                                                           CONFIG.edge_labels}, "depth": 1}))
    first = {**{label: "skip" for label in CONFIG.edge_labels}, "depth": 1}
    drawn = draw_candidates(CONFIG, uniform_probs(CONFIG), first, 8, seed=0, budgets=[budget])
    assert len(drawn) == 8
    assert all(cost.child_params(CONFIG, a) <= budget.maximum for a in drawn)


def test_an_undecided_search_exports_the_best_of_its_candidates(runs, tmp_path):
    """A 2-epoch search of the tiny MRPC run ends undecided: the candidates are trained and scored on
    held-out train examples, the exported child is the best scored, and a finished search phase is
    not redone when only the candidates change."""
    out = tmp_path / "search"
    args = ["search", "--teacher", str(runs / "MRPC"), "--output-dir", str(out), "--epochs", "2",
            "--batch-size", "16", "--no-progress"]
    assert main([*args, "--candidates", "0"]) == 0
    plain = json.loads((out / "architecture.json").read_text())
    assert plain["search"]["history"][-1]["top_prob_ratio"] < 1.2 and "candidates_tried" not in plain["search"]

    assert main([*args, "--candidates", "3"]) == 0
    doc = json.loads((out / "architecture.json").read_text())
    assert doc["search"]["history"] == plain["search"]["history"]          # the search phase was resumed, not redone
    tried = doc["search"]["candidates_tried"]
    assert len(tried) == 3 and tried[0]["arch"] == plain["architecture"]             # the argmax is the first candidate
    scores = [(c["held_out_metrics"]["f1"] + c["held_out_metrics"]["accuracy"]) / 2 for c in tried]
    assert all(0 <= s <= 1 for s in scores)
    best = tried[scores.index(max(scores))]
    assert doc["architecture"] == best["arch"] and doc["params"] == best["params"]
    checkpoint = out / "candidates" / "0" / "checkpoints" / "last.ckpt"
    written = checkpoint.stat().st_mtime_ns

    # One more candidate: the same draws first, the three trained ones resumed, not redone.
    assert main([*args, "--candidates", "4"]) == 0
    more = json.loads((out / "architecture.json").read_text())["search"]["candidates_tried"]
    assert more[:3] == tried and len(more) == 4
    assert checkpoint.stat().st_mtime_ns == written


def test_budgets_keep_candidates_in_their_band():
    """``--max-params`` and ``--min-speedup`` alike: every candidate within [1 - tolerance, 1] of the
    budget (parameters, or the time the speedup allows), as the export is."""
    table = toy_latency_table(CONFIG)
    widest = {**{label: "std_conv_7" for label in CONFIG.edge_labels}, "depth": CONFIG.k_max}
    first = {**{label: "std_conv_3" for label in CONFIG.edge_labels}, "depth": 2}
    settings = SearchConfig(max_params=cost.child_params(CONFIG, widest) // 2,
                            min_speedup=2 * table.speedup(CONFIG, widest))
    size, speed = budgets_of(CONFIG, settings, table)
    assert size.minimum == pytest.approx(0.85 * size.maximum, abs=1)
    assert speed.minimum == pytest.approx(0.85 * speed.maximum)
    in_band = draw_candidates(CONFIG, uniform_probs(CONFIG), first, 8, seed=0, budgets=[size])
    assert len(in_band) == 8
    assert all(size.minimum <= cost.child_params(CONFIG, a) <= size.maximum for a in in_band[1:])
    in_time = draw_candidates(CONFIG, uniform_probs(CONFIG), first, 8, seed=0, budgets=[speed])
    times = [table.child_seconds(CONFIG, a) for a in in_time[1:]]
    assert len(times) == 7 and all(speed.minimum <= t <= speed.maximum for t in times)


def test_a_speed_budget_picks_among_candidates_even_when_its_skew_looks_decided():
    """The hinge leaves flat distributions skewed towards cheap ops (top_prob_ratio 2.87 at 100x on
    SST-2): under --min-speedup the export is picked among candidates whatever the ratio."""
    decided, flat = [{"top_prob_ratio": 2.87}], [{"top_prob_ratio": 1.1}]
    assert not picks_among_candidates(decided, SearchConfig(max_params=6_400_000))
    assert picks_among_candidates(decided, SearchConfig(min_speedup=100))
    assert picks_among_candidates(flat, SearchConfig(max_params=6_400_000))
    assert not picks_among_candidates(decided, SearchConfig(min_speedup=100, candidates=1))
    # An architecture that never moved (all epochs warm-up) has nothing to pick from.
    assert not picks_among_candidates(decided, SearchConfig(min_speedup=100, epochs=2, warmup_epochs=2))
    assert not picks_among_candidates([], SearchConfig(min_speedup=100))


def test_candidates_slower_than_the_speed_budget_when_timed_are_dropped():
    """The table predicts; the child timed decides: a candidate timed below --min-speedup is not
    trained, and when none meets it the fastest is kept alone."""
    assert fast_enough([104.0, 97.0, 86.1, 112.0], 100) == [0, 3]
    assert fast_enough([97.0, 86.1], 100) == [0]
    assert fast_enough([86.1, 97.0], 100) == [1]


def test_a_fresh_child_refuses_a_config_built_for_another_store(runs):
    """Every candidate and retraining starts from fresh_student: a config of another task's labels,
    text layout or vocabulary is an error there, not a child with the wrong head."""
    store = open_teacher_run(runs / "SST-2")
    config = student_config(store, embed_dim=16, k_max=2)
    arch = random_arch(config, 0)
    assert fresh_student(arch, store, config).classifier.out_features == 2
    for change, message in (({"num_labels": 3}, "labels: 3 for the student, 2 for the teacher run"),
                            ({"is_pair": True}, "input: pair for the student, single text for the teacher run"),
                            ({"vocab_size": 40}, "vocabulary size: 40 for the student, 30522 for the teacher run")):
        with pytest.raises(ValueError, match=f"not SST-2's \\({message}\\): build it with student_config"):
            fresh_student(arch, store, dataclasses.replace(config, **change))
