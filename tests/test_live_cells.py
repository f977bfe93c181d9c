"""A cell whose output does not depend on its inputs (every intermediate node ``zero`` from the
inputs) is never exported, drawn or retrained: a 20-copy MRPC search exported exactly such a
cell (``max_pool_3`` from two nodes that were ``zero`` from both inputs), a student that gave
every pair the same logits."""

import dataclasses
import itertools
import json
import logging
import math
import random

import pytest
import torch

from nni_adabert.cli import main
from nni_adabert.errors import UserError
from nni_adabert.model.cost import child_params
from nni_adabert.model.depth import DEPTH_LABEL
from nni_adabert.model.space import (AdaBertStudent, StudentConfig, default_op_names, edge_label, edge_labels, edges,
                                     live_nodes, random_arch, reached_nodes, reads_inputs)
from nni_adabert.nas.budget import budget_warnings, derive_within_budget, has_weights, params_budget, speed_budget
from nni_adabert.workflows.candidates import draw_candidates
from nni_adabert.model.pretrained import save_pretrained
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.export import ARCH_FILE, load_student, read_architecture
from nni_adabert.workflows.student import student_config
from test_budget import preferred, random_probs, toy_latency_table
from test_strategy import supernet, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

# What the 20-copy MRPC search of seed 1 exported (bench/results/pairs/MRPC-causes).
DEAD_MRPC_CELL = {**{label: "zero" for label in edge_labels(3)}, "edge_4_2": "max_pool_3", "edge_4_3": "max_pool_3",
                  DEPTH_LABEL: 2}


@pytest.mark.parametrize("num_nodes", [1, 3, 5])
def test_edges_come_in_node_order_every_edge_into_a_node_before_any_out_of_it(num_nodes):
    pairs = edges(num_nodes)
    assert len(pairs) == len(set(pairs)) == sum(range(2, 2 + num_nodes))  # node j has j inputs
    assert [edge_label(j, i) for j, i in pairs] == edge_labels(num_nodes)
    for n, (j, i) in enumerate(pairs):
        assert 0 <= i < j < 2 + num_nodes
        assert all(later_j != i for later_j, _ in pairs[n + 1:])  # node i is complete when this edge reads it
        assert all(earlier_i != j for _, earlier_i in pairs[:n])  # and node j is read by nothing before


def test_liveness_follows_the_paths_from_the_inputs():
    cfg = tiny_config(is_pair=True, space="matching")
    assert live_nodes(DEAD_MRPC_CELL) == {0, 1} and not reads_inputs(DEAD_MRPC_CELL, cfg)
    # One edge from an input into node 2 makes node 2, then node 4 through its max_pool_3, live.
    fed = {**DEAD_MRPC_CELL, "edge_2_1": "skip"}
    assert live_nodes(fed) == {0, 1, 2, 4} and reads_inputs(fed, cfg)
    assert live_nodes({**DEAD_MRPC_CELL, "edge_3_0": "align"}) == {0, 1, 3, 4}


@pytest.mark.parametrize("space", ["paper", "matching"])
def test_a_dead_cell_gives_texts_of_one_length_the_same_logits_and_a_live_one_does_not(space):
    """What 'dead' means, on the student itself: changing every token changes nothing (a convolution
    of a dead node gives its BatchNorm shift, the same for every text of a length)."""
    cfg = tiny_config(is_pair=True, space=space)
    torch.manual_seed(0)
    ids = [torch.randint(5, cfg.vocab_size, (4, 9)) for _ in range(4)]
    conv_of_dead = {**DEAD_MRPC_CELL, "edge_4_2": "std_conv_3"}
    cells = ((DEAD_MRPC_CELL, True), (conv_of_dead, True),   # the live ones read both inputs (the paper space's rule)
             ({**DEAD_MRPC_CELL, "edge_2_1": "avg_pool_3", "edge_2_0": "skip"}, False),
             ({**conv_of_dead, "edge_3_0": "skip", "edge_3_1": "max_pool_3"}, False))
    for arch, dead in cells:
        assert reads_inputs(arch, cfg) != dead
        student = AdaBertStudent(cfg, arch).eval()
        first, second = (student(a, None, b, None).logits for a, b in (ids[:2], ids[2:]))
        assert torch.allclose(first, first[:1].expand_as(first)) == dead
        assert torch.allclose(first, second) == dead


# Cells that read one input node only: node 1 (text b in the paper space's first cell), node 0.
FROM_NODE_1 = {**{label: "zero" for label in edge_labels(3)}, "edge_2_1": "skip", "edge_4_2": "std_conv_3",
               DEPTH_LABEL: 1}
FROM_NODE_0 = {**{label: "zero" for label in edge_labels(3)}, "edge_3_0": "avg_pool_3", DEPTH_LABEL: 2}


def test_a_pair_cell_of_the_paper_space_must_read_both_inputs_elsewhere_one_will_do():
    assert reached_nodes(FROM_NODE_1, 3, {0}) == {0} and reached_nodes(FROM_NODE_1, 3, {1}) == {1, 2, 4}
    both = {**FROM_NODE_1, "edge_3_0": "max_pool_3"}
    for cfg, one_input_reads in ((tiny_config(is_pair=True, space="paper"), False),
                                 (tiny_config(is_pair=True, space="matching"), True), (tiny_config(), True)):
        assert reads_inputs(FROM_NODE_1, cfg) == reads_inputs(FROM_NODE_0, cfg) == one_input_reads
        assert reads_inputs(both, cfg)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_paper_space_pair_cell_fed_from_one_input_ignores_one_text(depth):
    """On the student itself: changing text a (same length) leaves the logits of a cell fed from node 1
    alone as they are at every depth, of a cell fed from node 0 alone at even depths (it reads b there)."""
    cfg = tiny_config(is_pair=True, space="paper")
    torch.manual_seed(0)
    a, other_a, b = (torch.randint(5, cfg.vocab_size, (4, 9)) for _ in range(3))
    both = {**FROM_NODE_1, "edge_3_0": "max_pool_3"}
    for arch, ignores_a in ((FROM_NODE_1, True), (FROM_NODE_0, depth % 2 == 0), (both, False)):
        student = AdaBertStudent(cfg, {**arch, DEPTH_LABEL: depth}).eval()
        assert torch.allclose(student(a, None, b, None).logits, student(other_a, None, b, None).logits) == ignores_a


def test_random_architectures_read_their_inputs():
    """A space where a quarter of the plain draws are dead: no seeded random child is."""
    cfg = StudentConfig(vocab_size=30, num_labels=2, embed_dim=8, k_max=3, num_nodes=1, max_positions=10,
                        op_names=("zero", "skip"))
    archs = [random_arch(cfg, seed) for seed in range(40)]
    assert all(reads_inputs(a, cfg) for a in archs)
    assert len({tuple(a.values()) for a in archs}) > 3   # still random


@pytest.mark.parametrize("is_pair, space", [(False, "paper"), (True, "matching")])
def test_the_default_spaces_random_seeds_below_1000_are_their_first_draws(is_pair, space):
    """The redraw of dead cells changed no ``random:<seed>`` of the default spaces that results cite."""
    cfg = StudentConfig(vocab_size=30, num_labels=2, is_pair=is_pair, space=space, op_names=default_op_names(space))
    for seed in range(1000):
        rng = random.Random(seed)
        first = {label: rng.choice(cfg.op_names) for label in cfg.edge_labels}
        assert random_arch(cfg, seed) == {**first, DEPTH_LABEL: rng.randint(1, cfg.k_max)}


def test_a_space_of_zeros_alone_is_refused():
    with pytest.raises(UserError, match="op_names must hold an op other than 'zero'"):
        StudentConfig(vocab_size=30, num_labels=2, op_names=("zero",))


def small_space(**kw):
    """2 intermediate nodes (5 edges), 4 ops: every cell can be enumerated (1,024)."""
    settings = dict(vocab_size=30, num_labels=2, embed_dim=8, k_max=2, num_nodes=2, max_positions=10,
                    op_names=("std_conv_3", "max_pool_3", "skip", "zero"))
    return StudentConfig(**{**settings, **kw})


SMALL_SPACES = {"one text": {}, "paper-space pairs": {"is_pair": True, "space": "paper"}}


def dead_argmax_probs(cfg, seed):
    """Distributions whose per-edge argmax is a dead cell: ``zero`` into node 2 from both inputs and
    from node 1 into node 3, ``max_pool_3`` from node 2 into node 3; random below that."""
    g = torch.Generator().manual_seed(seed)
    favourite = {"edge_2_0": "zero", "edge_2_1": "zero", "edge_3_0": "zero", "edge_3_1": "zero",
                 "edge_3_2": "max_pool_3"}
    ops = {}
    for label in cfg.edge_labels:
        weights = torch.rand(len(cfg.op_names), generator=g) * 0.5
        weights[cfg.op_names.index(favourite[label])] = 1.0
        ops[label] = dict(zip(cfg.op_names, (weights / weights.sum()).tolist()))
    return ops, {1: 0.4, 2: 0.6}


@pytest.mark.parametrize("space", SMALL_SPACES)
@pytest.mark.parametrize("seed", range(3))
def test_the_derivation_exports_the_most_probable_cell_that_reads_its_inputs(seed, space):
    cfg = small_space(**SMALL_SPACES[space])
    ops, depth = dead_argmax_probs(cfg, seed)
    argmax = {label: max(p, key=p.get) for label, p in ops.items()}
    assert not reads_inputs(argmax, cfg)

    def score(arch):
        return sum(math.log(ops[e][arch[e]]) for e in cfg.edge_labels) + math.log(depth[arch[DEPTH_LABEL]])

    children = [{**dict(zip(cfg.edge_labels, choice)), DEPTH_LABEL: k}
                for choice in itertools.product(cfg.op_names, repeat=len(cfg.edge_labels)) for k in (1, 2)]
    reading = [a for a in children if reads_inputs(a, cfg)]
    best = max(reading, key=score)
    derived = derive_within_budget(cfg, ops, depth)
    assert reads_inputs(derived, cfg) and score(derived) == pytest.approx(score(best))
    assert derived[DEPTH_LABEL] == 2
    # The cheapest child that reads its inputs, by formula and by enumeration:
    assert params_budget(cfg, 1).smallest(cfg) == min(child_params(cfg, a) for a in reading)
    # Under budgets too, even one only weightless children meet (a skip is as free as a zero).
    tight = params_budget(cfg, int(params_budget(cfg, 1).smallest(cfg)))
    assert reads_inputs(derive_within_budget(cfg, ops, depth, [tight]), cfg)
    table = toy_latency_table(cfg)   # zero takes no time, skip some
    fastest = speed_budget(table, 0.999 * table.reference_seconds / speed_budget(table, 1.0).smallest(cfg))
    assert reads_inputs(derive_within_budget(cfg, ops, depth, [fastest]), cfg)


@pytest.mark.parametrize("space", SMALL_SPACES)
@pytest.mark.parametrize("seed", range(2))
def test_under_a_budget_weights_count_only_where_the_inputs_reach(seed, space):
    """Against every cell of a 5-edge space: the most probable child, preferring a cell with weights
    on an edge from a live node (a convolution of a dead node has none that matter), in the band,
    then within the budget."""
    cfg = small_space(**SMALL_SPACES[space])
    ops, depth = random_probs(cfg, seed)
    children = [{**dict(zip(cfg.edge_labels, choice)), DEPTH_LABEL: k}
                for choice in itertools.product(cfg.op_names, repeat=len(cfg.edge_labels)) for k in (1, 2)]

    def score(arch):
        return sum(math.log(ops[e][arch[e]]) for e in cfg.edge_labels) + math.log(depth[arch[DEPTH_LABEL]])

    with_weights = [a for a in children if reads_inputs(a, cfg) and any(
        has_weights(cfg, a[edge_label(j, i)]) for j, i in edges(cfg.num_nodes) if i in live_nodes(a, cfg.num_nodes))]
    assert params_budget(cfg, 1).smallest(cfg, with_weights=True) == min(child_params(cfg, a) for a in with_weights)
    sizes = sorted({child_params(cfg, a) for a in children})
    for low, high in ((0, sizes[1]), (sizes[1], sizes[len(sizes) // 2]), (0, sizes[-1])):
        budget = dataclasses.replace(params_budget(cfg, high), minimum=low)
        derived = derive_within_budget(cfg, ops, depth, [budget])
        best = preferred(cfg, children, score, lambda a: low <= child_params(cfg, a) <= high,
                         lambda a: child_params(cfg, a) <= high)
        assert reads_inputs(derived, cfg) and score(derived) == pytest.approx(score(best))


def test_a_convolution_of_a_dead_node_does_not_count_as_weights():
    """The most probable cell holds its one convolution on an edge from node 2, which nothing feeds:
    under a budget of exactly one convolution the export moves it where the inputs reach."""
    cfg = small_space()
    favourite = {"edge_2_0": "zero", "edge_2_1": "zero", "edge_3_0": "skip", "edge_3_1": "zero",
                 "edge_3_2": "std_conv_3"}
    ops = {e: {n: 0.7 if n == favourite[e] else 0.1 for n in cfg.op_names} for e in cfg.edge_labels}
    depth = {1: 0.9, 2: 0.1}
    one_conv = child_params(cfg, {**favourite, DEPTH_LABEL: 1})
    derived = derive_within_budget(cfg, ops, depth, [params_budget(cfg, one_conv, tolerance=0.0)])
    assert child_params(cfg, derived) == one_conv and derived[DEPTH_LABEL] == 1
    (conv,) = [e for e in cfg.edge_labels if derived[e] == "std_conv_3"]
    assert int(conv.split("_")[2]) in live_nodes(derived, cfg.num_nodes)


def test_the_search_exports_a_live_cell_when_its_argmax_is_dead_and_the_argmax_otherwise():
    cfg = tiny_config(is_pair=True, space="matching", k_max=3)
    _, module = supernet(cfg, seed=0)
    favourite = {label: DEAD_MRPC_CELL[label] for label in cfg.edge_labels}
    with torch.no_grad():
        for m in module.straight_through_modules():
            label = str(m.label)
            m._arch_alpha.zero_()
            if label in favourite:
                m._arch_alpha[m.values.index(favourite[label])] = 2.0
            else:  # depth
                m._arch_alpha[1] = 2.0
    exported = module.export()
    assert reads_inputs(exported, cfg) and exported[DEPTH_LABEL] == 2
    # Only the cheapest change: one edge moved off its argmax, the others kept.
    changed = [e for e in cfg.edge_labels if exported[e] != DEAD_MRPC_CELL[e]]
    assert len(changed) == 1
    assert module.use_argmax() == exported   # validation runs the child it exports
    # A live argmax is exported as it is.
    with torch.no_grad():
        for m in module.straight_through_modules():
            if str(m.label) == "edge_2_0":
                m._arch_alpha[m.values.index("std_conv_3")] = 3.0
    assert module.export() == {**DEAD_MRPC_CELL, "edge_2_0": "std_conv_3"}


def test_candidates_drawn_from_the_distributions_read_their_inputs():
    cfg = small_space()
    ops, depth = dead_argmax_probs(cfg, 0)
    first = derive_within_budget(cfg, ops, depth)
    drawn = draw_candidates(cfg, {**ops, DEPTH_LABEL: depth}, first, 30, seed=0)
    assert len(drawn) == 30 and all(reads_inputs(a, cfg) for a in drawn)


def test_a_dead_student_is_refused_by_retrain_and_warned_about_on_loading(runs, tmp_path, capsys, caplog):
    dead = tmp_path / "dead"
    config = student_config(open_teacher_run(runs / "MRPC"), k_max=3, space="matching")
    save_pretrained(AdaBertStudent(config, DEAD_MRPC_CELL), dead, {"task": "MRPC"})
    with caplog.at_level(logging.WARNING):
        student = load_student(read_architecture(dead))
    assert "its cell does not read its input" in caplog.text and student.arch == DEAD_MRPC_CELL
    capsys.readouterr()
    out = tmp_path / "retrained"
    assert main(["retrain", "--arch", str(dead), "--teacher", str(runs / "MRPC"), "--output-dir", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "architecture.json: its cell does not read its input" in err[0]
    assert "retraining it cannot learn the task" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("num_nodes", [1, 2])
@pytest.mark.parametrize("space", SMALL_SPACES)
def test_the_cheapest_child_that_reads_its_inputs_by_formula_and_by_enumeration(space, num_nodes):
    """In time, where every op but ``zero`` costs something (a pair of the paper space pays for two edges)."""
    cfg = small_space(num_nodes=num_nodes, **SMALL_SPACES[space])
    budget = speed_budget(toy_latency_table(cfg), 1.0)
    cells = [{**dict(zip(cfg.edge_labels, choice)), DEPTH_LABEL: 1}
             for choice in itertools.product(cfg.op_names, repeat=len(cfg.edge_labels))]
    reading = [a for a in cells if reads_inputs(a, cfg)]
    weighted = [a for a in reading if any(has_weights(cfg, a[edge_label(j, i)]) for j, i in edges(num_nodes)
                                          if i in live_nodes(a, num_nodes))]
    assert budget.smallest(cfg) == pytest.approx(min(budget.child(cfg, a) for a in reading))
    assert budget.smallest(cfg, with_weights=True) == pytest.approx(min(budget.child(cfg, a) for a in weighted))


def test_without_convolutions_no_budget_warns_about_weights():
    cfg = small_space(op_names=("max_pool_3", "skip", "zero"))
    assert budget_warnings(cfg, [params_budget(cfg, int(params_budget(cfg, 1).smallest(cfg)))]) == []


def test_a_finished_search_that_exported_a_dead_cell_is_derived_again(runs, tmp_path, caplog):
    """A search finished before the derivation checked its cell: run again, it derives its export from its
    last checkpoint (here the same live cell as before) without training the search phase again, and
    fine-tunes that child afresh (the old child's fine-tuning goes)."""
    out = tmp_path / "searched"
    args = ["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "1",
            "--batch-size", "32", "--finetune-epochs", "1", "--no-progress"]
    assert main(args) == 0
    record = json.loads((out / ARCH_FILE).read_text())
    exported = record["architecture"]
    search_time = (out / "search" / "checkpoints" / "training_time.json").read_text()
    dead = {**{label: "zero" for label in exported if label != DEPTH_LABEL}, "edge_4_2": "max_pool_3",
            DEPTH_LABEL: exported[DEPTH_LABEL]}
    (out / ARCH_FILE).write_text(json.dumps({**record, "architecture": dead}))
    stale = out / "finetune" / "stale-file"
    stale.write_text("from the old child")
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    assert ("finished with a student: its cell does not read its input" in caplog.text
            and "deriving it again from its last checkpoint" in caplog.text)
    assert json.loads((out / ARCH_FILE).read_text())["architecture"] == exported
    assert (out / "search" / "checkpoints" / "training_time.json").read_text() == search_time
    assert not stale.exists() and (out / "finetune" / "checkpoints" / "last.ckpt").is_file()
    # A record that cannot be read (an edited dropout) is derived again too, and the warning says why.
    record = json.loads((out / ARCH_FILE).read_text())
    record["student_config"]["dropout"] = "abc"
    (out / ARCH_FILE).write_text(json.dumps(record))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    assert ("finished with a student: its architecture record cannot be read (architecture: student config: "
            "dropout must be in [0, 1), got 'abc'); deriving it again from its last checkpoint") in caplog.text
    assert json.loads((out / ARCH_FILE).read_text())["architecture"] == exported
