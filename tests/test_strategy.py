"""AdaBertStrategy: straight-through sampling, single-path exactness, gradients, search runs."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
from nni.nas.experiment import NasExperiment
from nni.nas.strategy import GumbelDARTS
from pytorch_lightning.callbacks import ModelCheckpoint

from nni_adabert.cli import build_parser
from nni_adabert.config import RetrainConfig, SearchConfig, TrainingConfig, from_options
from nni_adabert.errors import UserError
from nni_adabert.model.cost import child_params
from nni_adabert.model.ops import MaskedBatchNorm1d
from nni_adabert.model.space import AdaBertSpace, AdaBertStudent, StudentConfig, validate_arch
from nni_adabert.nas.distill import AdaBertDistillModule, model_inputs
from nni_adabert.nas.losses import final_kd_loss
from nni_adabert.nas.strategy import AdaBertStrategy, top_prob_ratio
from nni_adabert.nas.supermodules import efficiency_loss, gumbel_straight_through
from nni_adabert.training import EpochLog, recompute_batchnorm_statistics
from nni_adabert.workflows.search import UNDECIDED_RATIO, warn_if_undecided

V, C, J = 30, 2, 3


# Tiny tensors: one intra-op thread is much faster (and immune to oversubscription on busy CI).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    base = dict(vocab_size=V, num_labels=C, embed_dim=8, k_max=3, max_positions=10, dropout=0.0)
    base.update(kw)
    return StudentConfig(**base)


def synthetic_examples(n, seed, is_pair=False, length=8):
    """Label 1 iff token 1 occurs; teacher probes get more confident with depth; every 4th unlabeled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)

    def text():
        ids = torch.randint(3, V, (n, length), generator=g)
        lengths = torch.randint(3, length + 1, (n,), generator=g)
        mask = (torch.arange(length)[None] < lengths[:, None]).long()
        return ids, mask

    ids_a, mask_a = text()
    ids_a[labels == 1, 0] = 1
    ids_a = ids_a * mask_a
    sign = (2 * labels - 1).float()
    teacher = torch.stack([torch.stack([-sign * s, sign * s], -1) for s in (0.5, 1.0, 2.0)], 1)   # [n, J, C]
    gold = labels.clone()
    gold[::4] = -100
    rows = []
    for i in range(n):
        row = dict(input_ids_a=ids_a[i], attention_mask_a=mask_a[i], labels=gold[i], teacher_logits=teacher[i])
        rows.append(row)
    if is_pair:
        ids_b, mask_b = text()
        for i, row in enumerate(rows):
            row.update(input_ids_b=(ids_b * mask_b)[i, :5], attention_mask_b=mask_b[i, :5])
    return rows


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


MODES = {"single": {}, "full": {"full": True}, "every_depth": {"train_every_depth": True}}


def supernet(cfg, seed=0, mode="single", **strategy_kw):
    torch.manual_seed(seed)
    space = AdaBertSpace(cfg)
    strategy = AdaBertStrategy(seed=seed, **MODES[mode], **strategy_kw)
    strategy.mutate_model(space)
    module = strategy.configure_oneshot_module(AdaBertDistillModule(C))
    module.set_model(space)
    return space, module


def resample_nonzero_path(module, cfg, depth=2):
    """Sample a path with no `zero` op at ``depth`` (the space's last ops first: `align` too, in the
    matching space). Single-path: an edge whose sampled op is `zero` outputs nothing and so can't get a
    task gradient that step (the relaxed y still comes from Gumbel)."""
    nonzero = [op for op in cfg.op_names if op != "zero"][::-1]
    module.resample(force={**{label: nonzero[i % len(nonzero)] for i, label in enumerate(cfg.edge_labels)},
                           "depth": depth})


def arch_params(space):
    return {name: p for name, p in space.named_parameters() if name.endswith("_arch_alpha")}


# ----------------------------------------------------------------------------- sampling


def test_gumbel_straight_through_value_is_hard_gradient_is_relaxed():
    logits = torch.randn(10, requires_grad=True)
    draw = gumbel_straight_through(logits, 0.5, torch.Generator().manual_seed(3))
    expected = torch.zeros(10)
    expected[draw.index] = 1.0
    assert torch.equal(draw.gates.detach(), expected)            # exactly 0.0 / 1.0
    assert draw.index == int(draw.relaxed.argmax())
    v = torch.randn(10)
    (g_gate,) = torch.autograd.grad((draw.gates * v).sum(), logits, retain_graph=True)
    (g_relaxed,) = torch.autograd.grad((draw.relaxed * v).sum(), logits)
    assert torch.allclose(g_gate, g_relaxed) and g_gate.abs().min() > 0
    again = gumbel_straight_through(logits, 0.5, torch.Generator().manual_seed(3))
    assert again.index == draw.index and torch.equal(again.relaxed, draw.relaxed)
    forced = gumbel_straight_through(logits, 0.5, torch.Generator().manual_seed(3), force_index=7)
    assert forced.index == 7 and forced.gates[7].item() == 1.0


def test_one_sample_per_label_shared_by_every_cell():
    cfg = tiny_config()
    space, module = supernet(cfg, seed=5)
    ran = []
    for k, cell in enumerate(space.cells):
        for label, edge in cell.edges.items():
            for name in edge.names:
                edge[name].register_forward_hook(
                    lambda m, i, o, k=k, label=label, name=name: ran.append((k, label, name)))
    batch = collate(synthetic_examples(4, 0))
    depths = set()
    for _ in range(6):
        sample = module.resample()
        for label in cfg.edge_labels:
            draws = {id(cell.edges[label].draw) for cell in space.cells}
            assert len(draws) == 1                                   # one draw object per label
        ran.clear()
        space(**model_inputs(batch))
        cells_run = sorted({k for k, _, _ in ran})
        assert cells_run == list(range(sample["depth"]))             # only the first K cells
        for label in cfg.edge_labels:
            ops = {name for k, l, name in ran if l == label}
            assert ops == {sample[label]}                           # same op in every cell, nothing else ran
        depths.add(sample["depth"])
    assert len(depths) > 1                                          # it does sample


def test_sampling_is_seeded():
    cfg = tiny_config()
    _, m1 = supernet(cfg, seed=11)
    _, m2 = supernet(cfg, seed=11)
    _, m3 = supernet(cfg, seed=12)
    s1 = [m1.resample() for _ in range(4)]
    assert s1 == [m2.resample() for _ in range(4)]
    assert s1 != [m3.resample() for _ in range(4)]


# ----------------------------------------------------------------------------- single path == child


@pytest.mark.parametrize("is_pair,space", [(False, "paper"), (True, "paper"), (True, "matching")])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("training", [False, True])
def test_supernet_forward_equals_frozen_child(is_pair, space, mode, training):
    cfg = tiny_config(is_pair=is_pair, space=space)
    space, module = supernet(cfg, mode=mode, seed=1)
    batch = collate(synthetic_examples(6, 2, is_pair=is_pair))
    module.resample()
    space.train()
    for _ in range(2):                                               # non-trivial BN running stats
        space(**model_inputs(batch))
    for seed in range(3):
        sample = module.resample()
        child = space.freeze(sample)
        assert isinstance(child, AdaBertStudent) and len(child.cells) == sample["depth"]
        space.train(training)
        child.train(training)
        ours, theirs = space(**model_inputs(batch)), child(**model_inputs(batch))
        assert torch.equal(ours.logits, theirs.logits)
        assert len(ours.probe_logits) >= len(theirs.probe_logits) == sample["depth"]
        for a, b in zip(ours.probe_logits, theirs.probe_logits):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("term", ["ce", "kd", "efficiency"])
@pytest.mark.parametrize("pair_space", [None, "matching"])
def test_every_architecture_parameter_gets_gradient_from_each_loss(mode, term, pair_space):
    cfg = tiny_config(is_pair=True, space=pair_space) if pair_space else tiny_config()
    space, module = supernet(cfg, mode=mode, seed=3)
    params = arch_params(space)
    labels = {name.split(".")[-2] if "edges" in name else "depth" for name in params}
    assert labels == set(cfg.edge_labels) | {"depth"}
    resample_nonzero_path(module, cfg)
    space.train()
    parts = module.training_module.compute_loss(collate(synthetic_examples(8, 4, is_pair=cfg.is_pair)))
    value = getattr(parts, term)
    assert value is not None and value.item() > 0
    value.backward()
    unique = {id(p): (name, p) for name, p in params.items()}
    assert len(unique) == 10                                         # 9 edge labels + depth, shared by cells
    for name, p in unique.values():
        assert p.grad is not None, name
        assert torch.all(p.grad != 0), (name, p.grad)
        assert p.numel() == (len(cfg.op_names) if "edges" in name else cfg.k_max)   # align is a candidate


@pytest.mark.parametrize("every_depth", [False, True])
def test_train_every_depth_trains_the_cells_beyond_the_sampled_depth(every_depth):
    cfg = tiny_config(k_max=3)
    space, module = supernet(cfg, seed=2, mode="every_depth" if every_depth else "single")
    batch = collate(synthetic_examples(8, 4))
    resample_nonzero_path(module, cfg, depth=1)
    space.train()
    out = space(**model_inputs(batch))
    assert len(out.probe_logits) == (3 if every_depth else 1) and len(out.depth_logits) == (3 if every_depth else 0)
    parts = module.training_module.compute_loss(batch)
    assert (parts.every_depth is not None) == every_depth
    parts.total.backward()
    last_cell = [p.grad for name, p in space.cells[2].named_parameters() if "_arch_alpha" not in name]
    assert any(g is not None and g.abs().sum() > 0 for g in last_cell) == every_depth
    depth_grad = space.depth._arch_alpha.grad
    assert torch.all(depth_grad != 0) if every_depth else depth_grad is not None
    module.use_argmax()                                              # validation: the argmax child alone
    arch = module.export()
    out = space(**model_inputs(batch))
    assert len(out.probe_logits) == arch["depth"] and out.depth_logits == []


# ----------------------------------------------------------------------------- search runs


def loaders(is_pair=False, n_train=48, n_dev=24, batch_size=12):
    g = torch.Generator().manual_seed(0)
    train = DataLoader(synthetic_examples(n_train, 0, is_pair), batch_size=batch_size, shuffle=True, generator=g)
    dev = DataLoader(synthetic_examples(n_dev, 1, is_pair), batch_size=batch_size)
    return train, dev


def quiet_trainer(**kw):
    return Trainer(enable_progress_bar=False, enable_model_summary=False, logger=False, **kw)


def test_search_through_nas_experiment_exports_resumes(tmp_path):
    cfg = tiny_config()
    train, dev = loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    evaluator = Lightning(AdaBertDistillModule(C), quiet_trainer(max_epochs=3, callbacks=[ckpt],
                                                                  default_root_dir=tmp_path),
                          train_dataloaders=train, val_dataloaders=dev)
    torch.manual_seed(0)
    space = AdaBertSpace(cfg)
    strategy = AdaBertStrategy(seed=0, arc_lr=0.05)
    exp = NasExperiment(space, evaluator, strategy)
    exp.config.experiment_working_directory = tmp_path / "nni"
    exp.run()
    exp.stop()

    arch = exp.export_top_models(formatter="dict")[0]
    assert validate_arch(arch, cfg) == arch and list(arch) == cfg.edge_labels + ["depth"]
    oneshot = strategy.oneshot_module
    assert [h["epoch"] for h in oneshot.history] == [0, 1, 2]
    assert all(0.0 <= h["val_acc"] <= 1.0 and "val_f1" in h and h["params"] > 0 for h in oneshot.history)
    assert oneshot.history[-1]["arch"] == arch
    n_batches = 4
    assert oneshot.tau == pytest.approx(1.0 - 0.9 * (2 + (n_batches - 1) / n_batches) / 3)   # annealed per step

    # The exported child keeps the trained weights: it computes what the supernet's argmax path computes.
    child = exp.export_top_models(formatter="instance")[0]
    assert isinstance(child, AdaBertStudent)
    oneshot.use_argmax()
    batch = collate(synthetic_examples(5, 9))
    space.eval()
    child.eval()
    assert torch.equal(space(**model_inputs(batch)).logits, child(**model_inputs(batch)).logits)

    # Checkpoint holds the architecture logits; resuming continues from it.
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    alpha_keys = [k for k in state["state_dict"] if k.endswith("_arch_alpha")]
    assert any(k.endswith("depth._arch_alpha") for k in alpha_keys) and len(alpha_keys) == 9 * cfg.k_max + 1
    assert "adabert" in state
    saved_depth_alpha = next(v for k, v in state["state_dict"].items() if k.endswith("depth._arch_alpha"))
    assert torch.equal(saved_depth_alpha, space.depth._arch_alpha.detach())

    space2 = AdaBertSpace(cfg)
    strategy2 = AdaBertStrategy(seed=0, arc_lr=0.05)
    evaluator2 = Lightning(AdaBertDistillModule(C), quiet_trainer(max_epochs=4, default_root_dir=tmp_path),
                           train_dataloaders=train, val_dataloaders=dev,
                           fit_kwargs={"ckpt_path": str(tmp_path / "ckpt" / "last.ckpt")})
    exp2 = NasExperiment(space2, evaluator2, strategy2)
    exp2.config.experiment_working_directory = tmp_path / "nni"
    exp2.run()
    exp2.stop()
    assert [h["epoch"] for h in strategy2.oneshot_module.history] == [0, 1, 2, 3]


def test_nni_gumbel_darts_runs_on_the_same_space(tmp_path):
    cfg = tiny_config()
    train, dev = loaders()
    space = AdaBertSpace(cfg)
    evaluator = Lightning(AdaBertDistillModule(C), quiet_trainer(max_epochs=1, default_root_dir=tmp_path),
                          train_dataloaders=train, val_dataloaders=dev)
    exp = NasExperiment(space, evaluator, GumbelDARTS())
    exp.config.experiment_working_directory = tmp_path / "nni"
    exp.run()
    exp.stop()
    arch = exp.export_top_models(formatter="dict")[0]
    assert validate_arch(arch, cfg) == arch
    assert isinstance(space.freeze(arch), AdaBertStudent)
    # Our efficiency loss gives NNI's alphas a gradient too (NNI's own `penalty=` does not).
    space.train()
    space(**model_inputs(collate(synthetic_examples(4, 0))))
    efficiency_loss(space).backward()
    assert space.depth._arch_alpha.grad.abs().sum() > 0
    assert space.cells[0].edges["edge_2_0"]._arch_alpha.grad.abs().sum() > 0


def _search(beta, tmp_path, **kw):
    pl.seed_everything(0, verbose=False)
    cfg = tiny_config(k_max=4)
    space, module = supernet(cfg, seed=0, arc_lr=0.05, **kw)
    module.training_module.beta = beta
    train, dev = loaders()
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, train, dev)
    return cfg, module


def test_larger_beta_gives_smaller_child(tmp_path):
    cfg, lean = _search(16.0, tmp_path)
    _, free = _search(0.0, tmp_path)
    # The distributions left uniform: 16 x beta pushed them further than the task alone did.
    assert 1.0 < free.arch_stats()["top_prob_ratio"] < lean.arch_stats()["top_prob_ratio"]
    assert lean.arch_stats()["expected_params"] < free.arch_stats()["expected_params"]
    assert child_params(cfg, lean.export()) <= child_params(cfg, free.export())


def test_top_prob_ratio_runs_from_uniform_to_one_hot():
    assert top_prob_ratio({"edge": {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}, "depth": {1: 0.5, 2: 0.5}}) == 1.0
    assert top_prob_ratio({"edge": {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}, "depth": {1: 0.5, 2: 0.5}}) == 2.5
    _, module = supernet(tiny_config(k_max=4), seed=0)
    assert module.arch_stats()["top_prob_ratio"] == pytest.approx(1.0)   # zero logits: undecided


def test_an_undecided_search_is_flagged(caplog):
    """The architecture moved but ended nearly uniform (MRPC's default searches): the user is told
    the cell is close to a random one, and what to do."""
    moving = SearchConfig(epochs=3, warmup_epochs=1)
    with caplog.at_level("WARNING", logger="nni_adabert.workflows"):
        assert warn_if_undecided([{"top_prob_ratio": 1.5}, {"top_prob_ratio": 1.08}], moving)  # the last epoch counts
        assert not warn_if_undecided([{"top_prob_ratio": UNDECIDED_RATIO}], moving)
        assert not warn_if_undecided([{"top_prob_ratio": 1.0}], SearchConfig(epochs=1, warmup_epochs=1))  # never moved
        assert not warn_if_undecided([], moving) and not warn_if_undecided([{}], moving)
    [record] = caplog.records
    assert "1.08x as likely as a uniform pick" in record.message and "--epochs" in record.message
    caplog.clear()
    with caplog.at_level("INFO", logger="nni_adabert.workflows"):   # picked among candidates: said, not warned
        assert warn_if_undecided([{"top_prob_ratio": 1.08}], moving, candidates=5)
    [record] = caplog.records
    assert record.levelname == "INFO" and "the best of 5 candidates" in record.message


@pytest.mark.parametrize("clip", [None, 0.01])
def test_gradient_clipping_bounds_the_weight_gradients(tmp_path, clip):
    _, module = supernet(tiny_config(), seed=0, grad_clip=clip)
    norms, step = [], module.training_module.optimizer_step

    def record(epoch, batch_idx, optimizer, *args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(epoch, batch_idx, optimizer, *args, **kwargs)

    module.training_module.optimizer_step = record
    train, dev = loaders()
    pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
               enable_checkpointing=False, default_root_dir=tmp_path).fit(module, train, dev)
    assert norms
    if clip is None:
        assert max(norms) > 0.01   # so that the clipped run below has something to clip
    else:
        assert max(norms) <= clip * (1 + 1e-4)


def test_distill_module_retrains_a_frozen_child(tmp_path):
    cfg = tiny_config()
    space, module = supernet(cfg, seed=0)
    child = space.freeze(module.export())
    before = {k: v.clone() for k, v in child.state_dict().items()}
    distill = AdaBertDistillModule(C, TrainingConfig(lr=0.05))
    distill.set_model(child)
    train, dev = loaders()
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(distill, train, dev)
    assert 0.0 <= distill.last_val_metrics["val_acc"] <= 1.0
    assert not torch.equal(before["classifier.weight"], child.state_dict()["classifier.weight"])


def conv_child(cfg):
    """A frozen child with a convolution (and so a BatchNorm) on every edge, at depth 2."""
    return AdaBertStudent(cfg, {**{label: "std_conv_3" for label in cfg.edge_labels}, "depth": 2})


def batchnorm_statistics(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, MaskedBatchNorm1d)]


def test_batchnorm_statistics_are_recomputed_as_a_mean_over_the_batches():
    """PreciseBN: the statistics are a cumulative mean (the batches' order does not matter, unlike
    BatchNorm's moving average); the module's modes and momenta, the global generators and the weights
    are left as they were; the same batches give the same statistics; without batches nothing changes."""
    torch.manual_seed(0)
    child = conv_child(tiny_config()).eval()  # no dropout: each batch's pass is then the same in any order
    batches = [model_inputs(collate(synthetic_examples(8, seed))) for seed in range(4)]
    weights = {k: v.clone() for k, v in child.named_parameters()}

    module = AdaBertDistillModule(C)  # takes batches whole, as in training
    module.set_model(child)
    module.eval()

    def recompute(order):
        rng = torch.get_rng_state()
        assert recompute_batchnorm_statistics(module, order, seed=5) == len(order)
        assert torch.equal(torch.get_rng_state(), rng)
        return batchnorm_statistics(child)

    initial = batchnorm_statistics(child)
    forward = recompute(batches)
    backward = recompute(batches[::-1])
    assert len(forward) == 2 * len(tiny_config().edge_labels)
    for (mean, var), (mean_r, var_r), (mean_0, _) in zip(forward, backward, initial):
        assert torch.allclose(mean, mean_r, atol=1e-6) and torch.allclose(var, var_r, atol=1e-6)
        assert not torch.allclose(mean, mean_0)
    assert not module.training and not any(m.training for m in child.modules())
    assert {m.momentum for m in child.modules() if isinstance(m, MaskedBatchNorm1d)} == {0.1}
    assert all(torch.equal(v, weights[k]) for k, v in child.named_parameters())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(recompute(batches), forward))
    assert recompute_batchnorm_statistics(module, [], seed=5) == 0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batchnorm_statistics(child), forward))


def test_the_epoch_log_line_shows_epoch_means_of_the_training_terms(tmp_path, caplog):
    class StepValues(pl.Callback):
        def __init__(self):
            self.ce, self.sizes = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ce.append(float(trainer.callback_metrics["train_ce_step"]))
            self.sizes.append(int(batch["labels"].shape[0]))

    cfg = tiny_config()
    space, module = supernet(cfg, seed=0)
    distill = AdaBertDistillModule(C, TrainingConfig(lr=0.05))
    distill.set_model(space.freeze(module.export()))
    steps = StepValues()
    train, dev = loaders(n_train=40)                                # batches of 12, 12, 12, 4
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[steps, EpochLog()])
    with caplog.at_level("INFO", logger="nni_adabert.training"):
        trainer.fit(distill, train, dev)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert "_step" not in line and "_epoch" not in line
    shown = float(line.split("train_ce ")[1].split(",")[0])
    mean = sum(c * n for c, n in zip(steps.ce, steps.sizes)) / sum(steps.sizes)
    assert len(set(steps.ce)) > 1 and shown == pytest.approx(mean, abs=1e-4)   # the epoch's mean, not the last step


def test_a_search_epoch_line_leaves_the_choice_probabilities_to_the_metrics_logger(tmp_path, caplog):
    """NNI's one-shot module logs every choice's probability (``prob/<edge>/<op>``: over 100 in the real
    space); the epoch line keeps what a reader of a log uses: the losses, dev metrics, architecture stats."""
    cfg = tiny_config(k_max=2)
    space, module = supernet(cfg, seed=0, arc_lr=0.05)
    train, dev = loaders()
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[EpochLog()])
    with caplog.at_level("INFO", logger="nni_adabert.training"):
        trainer.fit(module, train, dev)
    assert sum(name.startswith("prob/") for name in trainer.callback_metrics) > len(cfg.edge_labels)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert "prob/" not in line and "arch/top_prob_ratio" in line and "train_ce" in line and "val_acc" in line


def test_weight_decay_shrinks_matrices_not_biases_or_norms(tmp_path):
    """With no gradient at all (lr-only steps), AdamW's decoupled decay alone moves the
    parameters: matrices shrink by (1 - lr * wd) per step, biases and norm scales stay."""
    cfg = tiny_config()
    space, module = supernet(cfg, seed=0)
    child = space.freeze(module.export())
    distill = AdaBertDistillModule(C, RetrainConfig(lr=0.1, weight_decay=0.5))
    distill.set_model(child)
    optimizer = distill.configure_optimizers()
    decayed, kept = optimizer.param_groups
    assert (decayed["weight_decay"], kept["weight_decay"]) == (0.5, 0.0)
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in kept["params"])
    assert len(decayed["params"]) + len(kept["params"]) == len(list(child.parameters()))
    before = {k: v.clone() for k, v in child.named_parameters()}
    for p in child.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(child.named_parameters())
    assert torch.allclose(after["classifier.weight"], before["classifier.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["classifier.bias"], before["classifier.bias"])
    assert torch.equal(after["embed.norm.weight"], before["embed.norm.weight"])


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", None)])
def test_adamw_is_fused_in_full_precision_and_steps_the_same(tmp_path, precision, fused):
    """Fused (one kernel for every parameter) where Lightning allows it with gradient clipping: full precision."""
    cfg = tiny_config()
    space, module = supernet(cfg, seed=0)
    child = space.freeze(module.export())
    distill = AdaBertDistillModule(C, RetrainConfig(lr=0.1, weight_decay=0.5))
    distill.set_model(child)
    distill.trainer = pl.Trainer(precision=precision, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, default_root_dir=tmp_path)
    optimizer = distill.configure_optimizers()  # (no loader: no schedule)
    assert optimizer.defaults["fused"] is fused
    before = child.classifier.weight.detach().clone()
    for p in child.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(child.classifier.weight, before * (1 - 0.1 * 0.5))


def test_alternating_steps_update_architecture(tmp_path):
    _, module = _search(4.0, tmp_path, alternate=True)
    assert [h["epoch"] for h in module.history] == [0, 1]
    alphas = [m._arch_alpha for m in module.straight_through_modules()]
    assert all(a.abs().sum() > 0 for a in alphas)                    # started at zero, Adam moved them


def test_held_out_batches_step_the_architecture_and_the_others_the_weights(tmp_path):
    pl.seed_everything(0, verbose=False)
    cfg = tiny_config(k_max=4)
    space, module = supernet(cfg, seed=0, arc_lr=0.05)
    seen = []
    step = module.training_module.training_step

    def recording_step(batch, batch_idx):
        seen.append((module.trainer.current_epoch, int(batch["labels"].shape[0])))
        return step(batch, batch_idx)

    module.training_module.training_step = recording_step
    g = torch.Generator().manual_seed(0)
    weights = DataLoader(synthetic_examples(48, 0), batch_size=12, shuffle=True, generator=g)   # 4 batches
    arch = DataLoader(synthetic_examples(10, 5), batch_size=5)                                 # 2, cycled
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, {"weights": weights, "arch": arch}, loaders()[1])
    # Warm-up epoch: weight steps only; then an architecture step on the held-out batch before each.
    assert seen == [(0, 12)] * 4 + [(1, 5), (1, 12)] * 4
    assert all(m._arch_alpha.abs().sum() > 0 for m in module.straight_through_modules())


# ----------------------------------------------------------------------------- ablation switches (paper Table 4)


@pytest.mark.parametrize("mse", [False, True])
def test_base_kd_distils_final_logits_and_still_moves_every_architecture_choice(mse):
    cfg = tiny_config()
    space, module = supernet(cfg, seed=3)
    module.training_module.config = TrainingConfig(probe_kd=False, final_kd=True, final_kd_mse=mse)
    resample_nonzero_path(module, cfg)
    space.train()
    batch = collate(synthetic_examples(8, 4))
    torch.manual_seed(0)
    parts = module.training_module.compute_loss(batch)
    torch.manual_seed(0)
    logits = space(**model_inputs(batch)).logits
    assert parts.kd.item() == pytest.approx(final_kd_loss(logits, batch["teacher_logits"], mse=mse).item(), abs=1e-6)
    parts.kd.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in space.probes.parameters())   # no probe KD
    for name, p in arch_params(space).items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name                 # depth gate in the logits


def synthetic_store(n_orig=6, n_aug=5):
    """A knowledge store in memory: ``n_orig`` labeled rows, then ``n_aug`` augmented ones (-100)."""
    import datasets

    from nni_adabert.teacher.knowledge import KnowledgeStore

    def rows(labels, start):
        return datasets.Dataset.from_dict({"input_ids_a": [[start + i, 5] for i in range(len(labels))],
                                           "label": labels, "teacher_logits": [[[0.0, 1.0]] * J] * len(labels)})

    train = datasets.concatenate_datasets([rows([i % 2 for i in range(n_orig)], 100), rows([-100] * n_aug, 200)])
    data = datasets.DatasetDict({"train": train, "dev": rows([0, 1], 300)})
    return KnowledgeStore(Path("unused"), data, {"task": "SST-2", "num_labels": C, "num_train_original": n_orig,
                                                 "num_train_augmented": n_aug})


def test_store_rows_limit_originals_and_augmented_apart():
    store = synthetic_store()
    first = lambda ds: [r[0] for r in ds["input_ids_a"]]  # noqa: E731
    assert first(store.rows("train")) == [100, 101, 102, 103, 104, 105, 200, 201, 202, 203, 204]
    assert first(store.rows("train", limit=8)) == [100, 101, 102, 103, 104, 105, 200, 201]      # as stored
    assert first(store.rows("train", limit=3, augmented_limit=2)) == [100, 101, 102, 200, 201]
    assert first(store.rows("train", limit=3, augmented_limit=0)) == [100, 101, 102]             # no DA
    assert first(store.rows("train", augmented_limit=0)) == [100, 101, 102, 103, 104, 105]
    assert first(store.rows("train", limit=2, augmented_limit=99)) == [100, 101, 200, 201, 202, 203, 204]
    batch = next(iter(store.loader("train", 16, shuffle=True, limit=3, augmented_limit=1)))
    assert sorted(batch["labels"].tolist()) == [-100, 0, 0, 1]


def test_search_config_switches_reach_the_loss_and_the_rows():
    default = AdaBertDistillModule(C, SearchConfig()).hparams
    assert (default.probe_kd, default.final_kd, default.optimizer) == (True, False, "sgd")
    base = AdaBertDistillModule(C, RetrainConfig(probe_kd=False, final_kd=True)).hparams
    assert (base.probe_kd, base.final_kd, base.optimizer) == (False, True, "adamw")
    with pytest.raises(UserError, match="probe_kd and final_kd are both off"):
        RetrainConfig(probe_kd=False, final_kd=False)

    def search_config(args):
        return from_options(SearchConfig, args)

    args = build_parser().parse_args(["search", "--teacher", "t", "--output-dir", "o", "--train-limit", "3",
                                      "--augmented-limit", "0", "--no-probe-kd", "--final-kd"])
    config = search_config(args)
    assert (config.train_limit, config.augmented_limit, config.probe_kd, config.final_kd) == (3, 0, False, True)
    default = search_config(build_parser().parse_args(["search", "--teacher", "t", "--output-dir", "o"]))
    # A search reads 20,000 + 20,000 rows unless told otherwise (`none`: all of them).
    assert (default.train_limit, default.augmented_limit, default.probe_kd, default.final_kd) == \
        (20000, 20000, True, False)
    every_row = search_config(build_parser().parse_args(["search", "--teacher", "t", "--output-dir", "o",
                                                         "--train-limit", "none", "--augmented-limit", "None"]))
    assert (every_row.train_limit, every_row.augmented_limit) == (None, None)
    with pytest.raises(UserError, match="augmented_limit must be an integer >= 0"):
        SearchConfig(augmented_limit=-1)
    with pytest.raises(UserError, match=r"dropout must be in \[0, 1\), got 1.0"):
        SearchConfig(dropout=1.0)
    assert AdaBertDistillModule(C, RetrainConfig(weight_decay=0.01)).hparams.weight_decay == 0.01
    with pytest.raises(UserError, match="final_kd alone is the paper's Base-KD"):
        search_config(build_parser().parse_args(["search", "--teacher", "t", "--output-dir", "o", "--no-probe-kd"]))
