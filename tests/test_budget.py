"""Budgets for the search (nni_adabert.nas.budget): parameters and measured speed. Their penalty
moves the op and depth logits, a search converges to them, the exported child meets them, and a
budget no child can meet is refused before training."""

import dataclasses
import itertools
import json
import math

import pytest
import pytorch_lightning as pl
import torch

from nni_adabert.cli import main
from nni_adabert.config import ArchitectureConfig, SearchConfig
from nni_adabert.errors import UserError
from nni_adabert.model import cost
from nni_adabert.model.cost import child_params, embedding_params
from nni_adabert.model.depth import DEPTH_LABEL
from nni_adabert.model.space import StudentConfig, edge_label, edges, live_nodes, reads_inputs, uniform_arch
from nni_adabert.model.latency import LatencyTable
from nni_adabert.nas.budget import (budget_warnings, check_budgets, derive_within_budget, has_weights, params_budget,
                                    speed_budget)
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.export import ARCH_FILE
from nni_adabert.workflows.student import student_config
from test_strategy import arch_params, loaders, supernet, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def smallest_child(cfg, include_embedding=True):
    return int(params_budget(cfg, 1, include_embedding).smallest(cfg))


def derive(cfg, ops, depth, max_params, include_embedding=True, min_params=0):
    """The most probable child within ``[min_params, max_params]`` parameters."""
    budget = params_budget(cfg, max_params, include_embedding)
    return derive_within_budget(cfg, ops, depth, [dataclasses.replace(budget, minimum=min_params)])


def random_probs(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    ops = {label: dict(zip(cfg.op_names, torch.softmax(torch.randn(len(cfg.op_names), generator=g), -1).tolist()))
           for label in cfg.edge_labels}
    depth = dict(zip(range(1, cfg.k_max + 1), torch.softmax(torch.randn(cfg.k_max, generator=g), -1).tolist()))
    return ops, depth


def preferred(cfg, children, score, in_band, within):
    """What the derivation should export, found by brute force among the children whose cell reads its
    inputs: the most probable one with cell weights (on an edge from a live node) in the band, else
    with weights within the budget, else any in the band, else any within."""
    def weighted(a):
        live = live_nodes(a, cfg.num_nodes)
        return any(has_weights(cfg, a[edge_label(j, i)]) for j, i in edges(cfg.num_nodes) if i in live)
    for fits in (lambda a: weighted(a) and in_band(a), lambda a: weighted(a) and within(a), in_band, within):
        pool = [a for a in children if reads_inputs(a, cfg) and fits(a)]
        if pool:
            return max(pool, key=score)


@pytest.mark.parametrize("seed", range(4))
def test_derivation_is_the_most_probable_child_within_the_budget(seed):
    """Against every child of a small space (2 edges x 8 ops x 3 depths)."""
    cfg = StudentConfig(vocab_size=30, num_labels=2, embed_dim=8, k_max=3, num_nodes=1, max_positions=10)
    ops, depth = random_probs(cfg, seed)
    children = [{**dict(zip(cfg.edge_labels, choice)), DEPTH_LABEL: k}
                for choice in itertools.product(cfg.op_names, repeat=len(cfg.edge_labels))
                for k in range(1, cfg.k_max + 1)]

    def score(arch):
        return sum(math.log(ops[e][arch[e]]) for e in cfg.edge_labels) + math.log(depth[arch[DEPTH_LABEL]])

    sizes = sorted({child_params(cfg, a) for a in children})
    for budget in (sizes[0], sizes[len(sizes) // 3], sizes[len(sizes) // 2], sizes[-1]):
        derived = derive(cfg, ops, depth, budget)
        assert child_params(cfg, derived) <= budget
        best = preferred(cfg, children, score, lambda a: False, lambda a: child_params(cfg, a) <= budget)
        assert score(derived) == pytest.approx(score(best))
    # With a lower bound: the most probable child in the band, when the band holds one.
    for low, high in ((sizes[len(sizes) // 3], sizes[len(sizes) // 2]), (sizes[-2], sizes[-1])):
        derived = derive(cfg, ops, depth, high, min_params=low)
        assert low <= child_params(cfg, derived) <= high
        best = preferred(cfg, children, score, lambda a: low <= child_params(cfg, a) <= high,
                         lambda a: child_params(cfg, a) <= high)
        assert score(derived) == pytest.approx(score(best))
    # A band no child falls in: the most probable child under the budget.
    gap = next(a + 1 for a, b in zip(sizes, sizes[1:]) if b - a > 1)
    assert derive(cfg, ops, depth, gap, min_params=gap) == derive(cfg, ops, depth, gap)
    # Without the embedding in the budget the same sizes shift by the embedding's parameters.
    derived = derive(cfg, ops, depth, sizes[1] - embedding_params(cfg), include_embedding=False)
    assert child_params(cfg, derived, include_embedding=False) <= sizes[1] - embedding_params(cfg)


def test_a_budget_no_child_meets_is_one_clear_error():
    cfg = tiny_config()
    smallest = smallest_child(cfg)
    check_budgets(cfg, [params_budget(cfg, smallest)])
    with pytest.raises(UserError, match=r"max_params 100 is below the smallest student of this space "
                                         rf"\({smallest:,} params; the embedding alone has "):
        check_budgets(cfg, [params_budget(cfg, 100)])
    check_budgets(cfg, [params_budget(cfg, smallest_child(cfg, include_embedding=False), include_embedding=False)])
    table = toy_latency_table(cfg)
    # The fastest child whose cell reads its inputs: one skip edge (the toy table's cheapest op but zero).
    fastest = table.reference_seconds / table.child_seconds(cfg, {**{e: "zero" for e in cfg.edge_labels},
                                                                  cfg.edge_labels[0]: "skip", DEPTH_LABEL: 1})
    check_budgets(cfg, [speed_budget(table, fastest)])
    with pytest.raises(UserError, match=r"min_speedup: no student of this space is that fast on this machine "
                                         r"\(the fastest one is predicted to take 2.00x the time allowed\)"):
        check_budgets(cfg, [speed_budget(table, 2 * fastest)])


def test_a_budget_only_cells_without_weights_meet_is_warned_about():
    cfg = tiny_config()
    table = toy_latency_table(cfg)
    for make in (lambda c: params_budget(cfg, c, tolerance=0.15), lambda c: speed_budget(table, 100 / c, 0.15)):
        smallest = make(1).smallest(cfg, with_weights=True)  # one cell, one conv_3, zero elsewhere
        conv3 = {**{e: "zero" for e in cfg.edge_labels}, cfg.edge_labels[0]: "std_conv_3", DEPTH_LABEL: 1}
        assert smallest == pytest.approx(make(1).child(cfg, conv3))
        (line,) = budget_warnings(cfg, [make(smallest * 0.99)])
        assert "only students whose cells have no weights" in line and "will have none" in line
        assert budget_warnings(cfg, [make(smallest)]) == []
    assert "the smallest with weights has" in budget_warnings(cfg, [params_budget(cfg, 100)])[0]


def test_derivation_prefers_a_cell_with_weights():
    """Distributions that put almost all their mass on weightless ops (a collapsed search) still
    export a cell with weights when the budgets admit one; only a budget below every such cell
    gets a weightless one, which still reads its inputs."""
    cfg = StudentConfig(vocab_size=30, num_labels=2, embed_dim=8, k_max=3, num_nodes=1, max_positions=10)
    ops = {e: {n: (0.9 if n == "zero" else 0.1 / (len(cfg.op_names) - 1)) for n in cfg.op_names}
           for e in cfg.edge_labels}
    depth = {1: 0.8, 2: 0.1, 3: 0.1}
    budget = params_budget(cfg, 10**6)
    derived = derive_within_budget(cfg, ops, depth, [budget])
    assert any(has_weights(cfg, derived[e]) for e in cfg.edge_labels)
    assert derived[DEPTH_LABEL] == 1 and sorted(derived[e] for e in cfg.edge_labels).count("zero") == 1
    below = int(budget.smallest(cfg, with_weights=True)) - 1
    weightless = derive_within_budget(cfg, ops, depth, [params_budget(cfg, below)])
    # one weightless op that reads an input (a pool or skip: as free as zero), zero on the other edge
    assert weightless[DEPTH_LABEL] == 1 and sorted(weightless[e] for e in cfg.edge_labels).count("zero") == 1
    assert reads_inputs(weightless, cfg)
    assert child_params(cfg, weightless) == child_params(cfg, uniform_arch(cfg, "zero", 1))
    # a floor only cells without weights reach gives way to a cell with weights below it
    band = dataclasses.replace(params_budget(cfg, 10**6), minimum=10**6 - 1)
    assert child_params(cfg, derive_within_budget(cfg, ops, depth, [band])) < band.minimum


def toy_latency_table(cfg, reference_seconds=100.0):
    """A latency table whose op times are their parameters plus a small cost (no measurement)."""
    ops = {n: (cost.op_params(n, cfg.embed_dim) + 5.0) / 1000 if n != "zero" else 0.0 for n in cfg.op_names}
    return LatencyTable(ops, cell_seconds=0.01, once_seconds=0.02, reference="test",
                        reference_seconds=reference_seconds)


def test_budget_penalty_sends_gradient_to_op_and_depth_logits():
    cfg = tiny_config()
    table = toy_latency_table(cfg)
    for kw in ({"max_params": smallest_child(cfg) + 400}, {"min_speedup": 500.0}):
        space, module = supernet(cfg, seed=0, latency=table, **kw)
        (b,) = module.budgets()
        penalty = b.penalty(b.expected(cfg, *module._distributions()))
        assert penalty.item() > 0
        penalty.backward()
        grads = {name: p.grad for name, p in arch_params(space).items()}
        assert len(grads) == len(cfg.edge_labels) + 1
        assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), kw
    # A size to reach pulls from both sides; a ceiling (the speed budget) only from above.
    for tolerance, floor in ((0.15, 85), (0.0, 100)):   # 0: exactly the budget, still a floor
        b = params_budget(cfg, 100, tolerance=tolerance)
        assert b.minimum == floor
        assert b.penalty(torch.tensor(150.0)).item() == pytest.approx(0.5)
        assert b.penalty(torch.tensor(50.0)).item() == pytest.approx(0.5)
    no_floor = params_budget(cfg, 100, tolerance=1.0)
    assert no_floor.minimum == 0 and no_floor.penalty(torch.tensor(50.0)).item() == 0
    for tolerance, floor in ((1.0, 0), (0.15, 85)):  # the export's floor; the penalty is a ceiling either way
        ceiling = speed_budget(table, table.reference_seconds / 100, tolerance)
        assert ceiling.minimum == pytest.approx(floor) and ceiling.maximum == pytest.approx(100)
        assert ceiling.penalty(torch.tensor(150.0)).item() == pytest.approx(0.5)
        assert ceiling.penalty(torch.tensor(50.0)).item() == 0


def test_expected_cost_is_the_mean_over_children():
    """E[cost] under the distributions equals the probability-weighted cost of every child."""
    cfg = StudentConfig(vocab_size=30, num_labels=2, embed_dim=8, k_max=3, num_nodes=1, max_positions=10)
    ops, depth = random_probs(cfg, 0)
    op_probs = torch.tensor([[ops[e][n] for n in cfg.op_names] for e in cfg.edge_labels], dtype=torch.float64)
    depth_probs = torch.tensor([depth[k] for k in range(1, cfg.k_max + 1)], dtype=torch.float64)
    for b in (params_budget(cfg, 10**6), speed_budget(toy_latency_table(cfg), 10.0)):
        mean = 0.0
        for choice in itertools.product(cfg.op_names, repeat=len(cfg.edge_labels)):
            for k in range(1, cfg.k_max + 1):
                arch = {**dict(zip(cfg.edge_labels, choice)), DEPTH_LABEL: k}
                p = depth[k] * math.prod(ops[e][o] for e, o in zip(cfg.edge_labels, choice))
                mean += p * b.child(cfg, arch)
        assert b.expected(cfg, op_probs, depth_probs).item() == pytest.approx(mean, rel=1e-6)  # float32 probabilities


def test_derivation_meets_a_speed_budget_and_both_budgets_at_once():
    """Against every child of a small space: the most probable child within the speed band, and
    within the speed and parameter budgets together."""
    cfg = StudentConfig(vocab_size=30, num_labels=2, embed_dim=8, k_max=3, num_nodes=1, max_positions=10)
    table = toy_latency_table(cfg)
    ops, depth = random_probs(cfg, 1)
    children = [{**dict(zip(cfg.edge_labels, choice)), DEPTH_LABEL: k}
                for choice in itertools.product(cfg.op_names, repeat=len(cfg.edge_labels))
                for k in range(1, cfg.k_max + 1)]

    def score(arch):
        return sum(math.log(ops[e][arch[e]]) for e in cfg.edge_labels) + math.log(depth[arch[DEPTH_LABEL]])

    times = sorted(table.child_seconds(cfg, a) for a in children)
    for target in (times[len(times) // 4], times[len(times) // 2]):
        speed = speed_budget(table, table.reference_seconds / target, tolerance=0.15)
        derived = derive_within_budget(cfg, ops, depth, [speed])
        assert 0.85 * target - 1e-9 <= table.child_seconds(cfg, derived) <= target + 1e-9
        assert table.speedup(cfg, derived) >= table.reference_seconds / target - 1e-9
        best = preferred(cfg, children, score, lambda a: 0.85 * target <= table.child_seconds(cfg, a) <= target,
                         lambda a: table.child_seconds(cfg, a) <= target)
        assert score(derived) == pytest.approx(score(best))
        size = params_budget(cfg, sorted(child_params(cfg, a) for a in children)[len(children) // 3])
        both = derive_within_budget(cfg, ops, depth, [speed, size])
        best = preferred(cfg, children, score,
                         lambda a: 0.85 * target <= table.child_seconds(cfg, a) <= target
                         and child_params(cfg, a) <= size.maximum,
                         lambda a: table.child_seconds(cfg, a) <= target and child_params(cfg, a) <= size.maximum)
        assert score(both) == pytest.approx(score(best))
        assert child_params(cfg, both) <= size.maximum and table.child_seconds(cfg, both) <= target + 1e-9


def test_a_search_converges_to_its_budget_and_exports_a_child_within_it(tmp_path):
    pl.seed_everything(0, verbose=False)
    cfg = tiny_config(k_max=4)
    # Half-way between the smallest and the largest child: neither end of the space.
    largest = child_params(cfg, {**{e: "std_conv_7" for e in cfg.edge_labels}, DEPTH_LABEL: cfg.k_max})
    budget = (smallest_child(cfg) + largest) // 2
    space, module = supernet(cfg, seed=0, arc_lr=0.05, max_params=budget, budget_weight=4.0)
    start = module.expected_params().item()
    train, dev = loaders()
    pl.Trainer(max_epochs=4, enable_progress_bar=False, enable_model_summary=False, logger=False,
               enable_checkpointing=False, default_root_dir=tmp_path).fit(module, train, dev)
    end = module.expected_params().item()
    assert abs(end / budget - 1) < 0.15 and abs(end / budget - 1) < abs(start / budget - 1)
    arch = module.export()
    assert (1 - module.config.budget_tolerance) * budget <= child_params(cfg, arch) <= budget
    assert module.history[-1]["params"] == child_params(cfg, arch)   # validation ran the exported child


def test_budget_settings_are_search_settings():
    assert ArchitectureConfig(max_params=10).max_params == 10
    # The budget takes L_E's place: the loss's β is 0 under a budget, the given β otherwise.
    assert SearchConfig(max_params=10, beta=2.0).efficiency_beta == 0.0
    assert SearchConfig(beta=2.0).efficiency_beta == 2.0
    with pytest.raises(UserError, match="max_params must be an integer >= 1, got 0"):
        SearchConfig(max_params=0)


def test_search_command_exports_a_student_within_its_budget(runs, tmp_path, capsys):
    """On the real SST-2 slice: `search --max-params` (the embedding counted) exports a child within
    the budget and says so; the budget is recorded with the search's settings."""
    store = open_teacher_run(runs / "SST-2")
    space = student_config(store)
    budget = smallest_child(space) + 150_000   # room for about three 3-wide convolutions in all
    out = tmp_path / "student"
    assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "2",
                 "--batch-size", "16", "--arc-lr", "0.05", "--max-params", str(budget), "--no-progress"]) == 0
    doc = json.loads((out / ARCH_FILE).read_text())
    assert 0.85 * budget <= doc["params"] <= budget and doc["search"]["max_params"] == budget
    assert doc["params"] == child_params(StudentConfig.from_dict(doc["student_config"]), doc["architecture"])
    assert f"budget: {budget:,} params; the student has {doc['params']:,}" in capsys.readouterr().out
