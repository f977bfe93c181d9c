"""Ops, the model space, frozen children and the analytic cost tables."""

import json
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from nni.mutable import Categorical
from nni.nas.nn.pytorch import LayerChoice, MutableModule
from torch.utils.flop_counter import FlopCounterMode

from nni_adabert.data.encoding import masked_max, masked_mean
from nni_adabert.model.cost import child_flops, child_params, normalized_op_costs, op_flops, op_params
from nni_adabert.errors import UserError
from nni_adabert.model.ops import (OP_NAMES, OPS, PAIR_OP_NAMES, CrossAlign, MaskedBatchNorm1d, ReLUConvBN,
                                   build_op)
from nni_adabert.model.pretrained import from_pretrained, save_pretrained
from nni_adabert.model.space import (AdaBertSpace, AdaBertStudent, StudentConfig, edge_labels, factorized_embedding,
                                     random_arch, resolve_space, validate_arch)
from nni_adabert.workflows.student import retrain_space

D = 8
# (is_pair, space): a single text, a pair in the paper's space, a pair in the matching space.
INPUTS = [(False, "paper"), (True, "paper"), (True, "matching")]


# Tiny tensors: one intra-op thread is much faster (and immune to oversubscription on busy CI).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    base = dict(vocab_size=40, num_labels=3, embed_dim=D, k_max=3, max_positions=32, dropout=0.0)
    base.update(kw)
    return StudentConfig(**base)


def padded(x, mask, extra):
    """Append `extra` padded positions (zeros) to x [B, D, L] and mask [B, 1, L]."""
    return torch.nn.functional.pad(x, (0, extra)), torch.nn.functional.pad(mask, (0, extra))


# ----------------------------------------------------------------------------- ops


def test_op_table_has_the_ten_ops_of_the_paper():
    assert OP_NAMES == ("std_conv_3", "std_conv_5", "std_conv_7", "dil_conv_3", "dil_conv_5", "dil_conv_7",
                        "avg_pool_3", "max_pool_3", "skip", "zero")
    assert set(OPS) == set(OP_NAMES) | {"align"} and PAIR_OP_NAMES == OP_NAMES + ("align",)
    with pytest.raises(KeyError, match="unknown op"):
        build_op("sep_conv_3", D)


@pytest.mark.parametrize("name", PAIR_OP_NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_ops_keep_length_zero_padding_and_ignore_padding(name, training):
    torch.manual_seed(0)
    op = build_op(name, D).train(training)
    x = torch.randn(4, D, 7)                                   # an even batch: align pairs row r with r + 2
    mask = torch.ones(4, 1, 7)
    mask[1, :, 5:] = 0.0
    mask[2, :, 2:] = 0.0
    x = x * mask
    if not training:   # give BN non-trivial running statistics
        for m in op.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    y = op(x, mask)
    assert y.shape == x.shape                                  # SAME padding
    assert torch.all(y * (1 - mask) == 0)                      # zero on padding
    x2, m2 = padded(x, mask, 4)
    y2 = op(x2, m2)
    # Same result whatever the padded length (BN statistics and pooling are masked).
    assert torch.allclose(y2[..., :7], y, atol=1e-5)


def test_dilated_convs_are_real_dilated_convolutions():
    for k in (3, 5, 7):
        std, dil = build_op(f"std_conv_{k}", D), build_op(f"dil_conv_{k}", D)
        assert isinstance(dil, ReLUConvBN) and dil.conv.dilation == (2,) and dil.conv.kernel_size == (k,)
        assert std.conv.dilation == (1,) and dil.conv.padding == (k - 1,)
    # Receptive field of dil_conv_3 is 5 positions: an impulse spreads to t-2, t, t+2 only.
    op = build_op("dil_conv_3", 1).eval()
    with torch.no_grad():
        op.conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, 9)
    x[0, 0, 4] = 1.0
    y = op(x, torch.ones(1, 1, 9))
    changed = (y[0, 0] != y[0, 0, 0]).nonzero().flatten().tolist()
    assert changed == [2, 4, 6]


def test_pools_ignore_padding_values():
    x = torch.tensor([[[-3.0, -1.0, -2.0, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    assert build_op("max_pool_3", 1)(x, mask).tolist() == [[[-1.0, -1.0, -1.0, 0.0]]]
    assert build_op("avg_pool_3", 1)(x, mask).tolist() == [[[-2.0, -2.0, -1.5, 0.0]]]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batchnorm_tracks_running_statistics_like_batchnorm(momentum):
    """Without padding, the running statistics follow nn.BatchNorm1d's: an exponential
    average for a momentum, the cumulative mean of the batches for None."""
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(D, momentum=momentum), torch.nn.BatchNorm1d(D, momentum=momentum)
    for _ in range(5):
        x = torch.randn(3, D, 6) * 2 + torch.randn(1, D, 1)
        masked(x, torch.ones(3, 1, 6))
        plain(x)
    assert torch.allclose(masked.running_mean, plain.running_mean, atol=1e-5)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-5)
    assert masked.num_batches_tracked.item() == 5


# ----------------------------------------------------------------------------- space


def test_space_declares_nine_shared_edge_choices_and_a_depth_choice():
    cfg = tiny_config()
    space = AdaBertSpace(cfg)
    mutables = space.simplify()
    assert list(mutables) == edge_labels(3) + ["depth"]
    assert len(edge_labels(3)) == 9
    for label in edge_labels(3):
        assert isinstance(mutables[label], Categorical) and list(mutables[label].values) == list(OP_NAMES)
    assert list(mutables["depth"].values) == [1, 2, 3]
    # Every cell has its own LayerChoice (own weights) with the shared label.
    choices = [m for m in space.modules() if isinstance(m, LayerChoice)]
    assert len(choices) == 9 * cfg.k_max
    w0 = space.cells[0].edges["edge_2_0"]["std_conv_3"].conv.weight
    w1 = space.cells[1].edges["edge_2_0"]["std_conv_3"].conv.weight
    assert w0 is not w1
    out = space(torch.randint(0, 40, (2, 5)), torch.ones(2, 5))     # NNI dry run (default arch)
    assert out.logits.shape == (2, 3) and len(out.probe_logits) == 1


def test_config_round_trips_and_rejects_nonsense():
    cfg = tiny_config(is_pair=True, op_names=("skip", "zero", "std_conv_3"))
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UserError, match="unknown field"):
        StudentConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(UserError, match="op_names"):
        tiny_config(op_names=("conv_9",))
    with pytest.raises(UserError, match="k_max"):
        tiny_config(k_max=0)


def test_validate_arch_errors():
    cfg = tiny_config()
    arch = random_arch(cfg, seed=0)
    assert validate_arch(arch, cfg) == arch
    with pytest.raises(UserError, match="unknown op"):
        validate_arch({**arch, "edge_2_0": "conv_9"}, cfg)
    with pytest.raises(UserError, match="missing edge 'edge_3_1'"):
        validate_arch({k: v for k, v in arch.items() if k != "edge_3_1"}, cfg)
    with pytest.raises(UserError, match="depth"):
        validate_arch({**arch, "depth": 4}, cfg)
    with pytest.raises(UserError, match="depth"):
        validate_arch({**arch, "depth": "2"}, cfg)
    with pytest.raises(UserError, match="unknown key"):
        validate_arch({**arch, "edge_5_0": "skip"}, cfg)


def test_factorized_embedding_is_pca_projection():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 12))[0][:, :3]           # 3 orthonormal directions in R^12
    coords = torch.randn(50, 3) * torch.tensor([5.0, 2.0, 1.0])
    teacher = coords @ basis.T + 0.7                                  # rank-3 + offset, V=50, H=12
    emb = factorized_embedding(teacher, dim=3)
    assert emb.shape == (50, 3)
    # Rank-3 data: the 3 principal scores keep all pairwise distances.
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(emb, emb, compute_mode=exact), torch.cdist(teacher, teacher, compute_mode=exact),
                          atol=1e-4)
    assert emb.var(0)[0] > emb.var(0)[1] > emb.var(0)[2]             # ordered by variance
    wide = factorized_embedding(teacher, dim=16)                       # H < dim: zero-padded
    assert wide.shape == (50, 16) and torch.all(wide[:, 12:] == 0)
    space = AdaBertSpace(tiny_config(vocab_size=50, embed_dim=3), embedding_init=emb)
    assert torch.equal(space.embed.word.weight.data, emb)
    with pytest.raises(UserError, match="same tokenizer"):
        AdaBertSpace(tiny_config(vocab_size=51, embed_dim=3), embedding_init=emb)


@pytest.mark.parametrize("is_pair,space", INPUTS)
def test_freeze_gives_plain_child_with_first_k_cells_and_space_weights(is_pair, space):
    torch.manual_seed(0)
    cfg = tiny_config(is_pair=is_pair, space=space)
    space = AdaBertSpace(cfg)
    arch = {**random_arch(cfg, seed=3), "depth": 2}
    child = space.freeze(arch)
    assert type(child) is AdaBertStudent
    assert not any(isinstance(m, MutableModule) for m in child.modules())
    assert len(child.cells) == 2 and len(child.probes) == 2
    conv_label = next((l for l in cfg.edge_labels if arch[l].startswith(("std", "dil"))), None)
    if conv_label is not None:
        assert torch.equal(child.cells[1].edges[conv_label].conv.weight,
                           space.cells[1].edges[conv_label][arch[conv_label]].conv.weight)
    assert all(isinstance(v, torch.Tensor) for v in child.state_dict().values())
    ids = torch.randint(1, 40, (2, 6))
    kwargs = dict(input_ids_b=torch.randint(1, 40, (2, 4)), attention_mask_b=torch.ones(2, 4)) if is_pair else {}
    out = child.eval()(ids, torch.ones(2, 6), **kwargs)
    assert out.logits.shape == (2, 3) and len(out.probe_logits) == 2 and out.depth_terms == [(2, None)]
    # A child built from scratch loads the frozen child's state dict by name, via safetensors.
    fresh = AdaBertStudent(cfg.to_dict(), arch).eval()
    fresh.load_state_dict(safetensors.torch.load(safetensors.torch.save(child.state_dict())))
    assert torch.equal(fresh(ids, torch.ones(2, 6), **kwargs).logits, out.logits)


def test_child_ignores_padding_and_checks_inputs():
    torch.manual_seed(0)
    cfg = tiny_config()
    child = AdaBertStudent(cfg, {**{l: OP_NAMES[i] for i, l in enumerate(cfg.edge_labels)}, "depth": 3}).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    short = child(ids, torch.ones(1, 4)).logits
    long_ids = torch.tensor([[5, 6, 7, 8, 0, 0, 0]])
    long = child(long_ids, torch.tensor([[1, 1, 1, 1, 0, 0, 0]])).logits
    assert torch.allclose(short, long, atol=1e-5)
    with pytest.raises(ValueError, match="max_positions"):
        child(torch.ones(1, 33, dtype=torch.long), None)
    with pytest.raises(ValueError, match="input_ids_b"):
        AdaBertStudent(tiny_config(is_pair=True), random_arch(cfg, 0))(ids, None)


# ----------------------------------------------------------------------------- cost


def _numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("is_pair,space", INPUTS)
def test_analytic_params_match_numel(seed, is_pair, space):
    cfg = tiny_config(is_pair=is_pair, k_max=4, space=space)
    arch = random_arch(cfg, seed)
    child = AdaBertStudent(cfg, arch)
    probes = _numel(child.probes)
    assert child_params(cfg, arch, include_probes=True) == _numel(child)
    assert child_params(cfg, arch) == _numel(child) - probes
    assert child_params(cfg, arch, include_embedding=False) == _numel(child) - probes - _numel(child.embed)
    for name in PAIR_OP_NAMES:
        assert op_params(name, D) == _numel(build_op(name, D))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("is_pair,space", INPUTS)
def test_analytic_flops_match_flop_counter(seed, is_pair, space):
    cfg = tiny_config(is_pair=is_pair, k_max=4, space=space)
    arch = random_arch(cfg, seed)
    child = AdaBertStudent(cfg, arch).eval()
    batch, la, lb = 3, 9, 6
    inputs = dict(input_ids_a=torch.randint(1, 40, (batch, la)), attention_mask_a=torch.ones(batch, la))
    if is_pair:
        inputs.update(input_ids_b=torch.randint(1, 40, (batch, lb)), attention_mask_b=torch.ones(batch, lb))
    for with_probes in (False, True):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            child(**inputs, return_probes=with_probes)
        # FlopCounterMode counts matmul-class ops only; so does child_flops (see cost.py).
        assert counter.get_total_flops() == batch * child_flops(cfg, arch, max(la, lb), include_probes=with_probes)
    for name in PAIR_OP_NAMES:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            build_op(name, D).eval()(torch.randn(2, D, 11), torch.ones(2, 1, 11))
        assert counter.get_total_flops() == 2 * op_flops(name, D, 11)


def test_normalized_op_costs():
    cost = normalized_op_costs(OP_NAMES, 128)
    by_name = dict(zip(OP_NAMES, cost.tolist()))
    assert by_name["std_conv_7"] == pytest.approx(1.0) and by_name["dil_conv_7"] == pytest.approx(1.0)
    assert by_name["zero"] == 0.0 and by_name["skip"] == 0.0
    assert 0.0 < by_name["max_pool_3"] < by_name["avg_pool_3"] < 0.01        # cheap, not free
    assert by_name["std_conv_3"] < by_name["std_conv_5"] < by_name["std_conv_7"]
    assert torch.allclose(cost, normalized_op_costs(OP_NAMES, 128, seq_len=17))  # independent of L


# ----------------------------------------------------------------------------- text pairs: the matching space


def test_align_compares_each_text_with_its_partner_and_ignores_the_partners_padding():
    torch.manual_seed(0)
    op = CrossAlign()
    a, b = torch.randn(2, D, 5), torch.randn(2, D, 6)
    mask_b = torch.ones(2, 1, 6)
    mask_b[0, :, 3:] = 0.0                                       # pair 0's second text has 3 tokens
    b = b * mask_b
    x = torch.cat([torch.nn.functional.pad(a, (0, 1)), b])       # [a_0, a_1, b_0, b_1], one length
    mask = torch.cat([torch.nn.functional.pad(torch.ones(2, 1, 5), (0, 1)), mask_b])
    out = op(x, mask)
    # Changing pair 0's second text changes what its first text's positions see; pair 1 is untouched.
    changed = x.clone()
    changed[2, :, 1] += 3.0
    out2 = op(changed, mask)
    assert not torch.allclose(out2[0], out[0]) and torch.equal(out2[1], out[1])
    # Padding of the partner never receives attention weight: whatever sits there, the output is the same.
    noisy = x.clone()
    noisy[2, :, 3:] = 100.0 * torch.randn(D, 3)
    assert torch.allclose(op(noisy, mask)[0], out[0], atol=1e-5)
    # A word with an exact match in the other text: the output's channel mean is ~ cos = 1.
    same = torch.cat([x[:1], x[:1]])
    assert op(same, torch.ones(2, 1, 6))[0].mean(dim=0).max() > 0.5
    # Nothing grows with the input's scale (the op is stacked on itself in deep cells).
    assert torch.allclose(op(10 * x, mask), out, atol=1e-4)


def test_matching_space_sees_both_texts_and_single_text_tasks_are_unaffected():
    torch.manual_seed(0)
    cfg = tiny_config(is_pair=True, space="matching")
    assert cfg.op_names == PAIR_OP_NAMES and cfg.head_dim == 4 * D and cfg.texts_per_example == 2
    # Text a feeds node 0; with align on the edges from node 0, changing text b changes the logits of the pair.
    arch = {**{label: "zero" for label in cfg.edge_labels}, "edge_2_0": "align", "depth": 1}
    child = AdaBertStudent(cfg, arch).eval()
    ids_a, ids_b = torch.randint(1, 40, (2, 6)), torch.randint(1, 40, (2, 4))
    out = child(ids_a, None, ids_b, None).logits
    other_b = ids_b.clone()
    other_b[0, 2] = (other_b[0, 2] % 39) + 1
    out2 = child(ids_a, None, other_b, None).logits
    assert not torch.allclose(out2[0], out[0]) and torch.allclose(out2[1], out[1], atol=1e-6)
    # Padding text b changes nothing.
    padded_b = torch.cat([ids_b, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    assert torch.allclose(child(ids_a, None, padded_b, None).logits, out, atol=1e-5)
    # Single-text tasks: one space, the paper's ten ops, the classifier on D features.
    single = tiny_config()
    assert single.space == "paper" and single.op_names == OP_NAMES and single.head_dim == D
    assert resolve_space("auto", False) == "paper" and resolve_space("auto", True) == "matching"
    with pytest.raises(UserError, match="single-text"):
        resolve_space("matching", False)
    with pytest.raises(UserError, match="single-text"):
        tiny_config(space="matching")
    with pytest.raises(UserError, match="op 'align'"):
        validate_arch({**arch, "edge_2_0": "align"}, tiny_config(is_pair=True))   # the paper's space


def test_architecture_files_without_a_space_load_as_the_papers_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(is_pair=True)
    child = AdaBertStudent(cfg, random_arch(cfg, seed=1)).eval()
    save_pretrained(child, tmp_path, {"task": "MRPC"})
    doc = json.loads((tmp_path / "architecture.json").read_text())
    assert doc["student_config"]["space"] == "paper"
    del doc["student_config"]["space"]                           # as written before the field existed
    (tmp_path / "architecture.json").write_text(json.dumps(doc))
    loaded = from_pretrained(tmp_path)
    ids_a, ids_b = torch.randint(1, 40, (3, 7)), torch.randint(1, 40, (3, 5))
    assert loaded.config.space == "paper"
    assert torch.equal(loaded(ids_a, None, ids_b, None).logits, child(ids_a, None, ids_b, None).logits)


def test_matching_files_without_norm_texts_load_the_head_they_were_trained_with(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(is_pair=True, space="matching", norm_texts=False)
    arch = {**random_arch(cfg, seed=1), "depth": 2}
    child = AdaBertStudent(cfg, arch).eval()
    save_pretrained(child, tmp_path, {"task": "MRPC"})
    doc = json.loads((tmp_path / "architecture.json").read_text())
    del doc["student_config"]["norm_texts"]                      # as written before the field existed
    (tmp_path / "architecture.json").write_text(json.dumps(doc))
    ids_a, ids_b = torch.randint(1, 40, (3, 7)), torch.randint(1, 40, (3, 5))
    loaded = from_pretrained(tmp_path)
    assert loaded.config.norm_texts is False
    assert torch.equal(loaded(ids_a, None, ids_b, None).logits, child(ids_a, None, ids_b, None).logits)
    # New configs normalise, and the field round-trips; the same weights then give other logits.
    normed = AdaBertStudent(tiny_config(is_pair=True, space="matching"), arch).eval()
    assert normed.config.norm_texts and StudentConfig.from_dict(normed.config.to_dict()).norm_texts
    normed.load_state_dict(child.state_dict())
    assert not torch.allclose(normed(ids_a, None, ids_b, None).logits, child(ids_a, None, ids_b, None).logits)


def test_max_pooling_reads_real_tokens_only():
    x = torch.tensor([[[1.0, -2.0, 9.0]], [[-3.0, -1.0, 5.0]]])      # [B=2, D=1, L=3]
    mask = torch.tensor([[[1, 1, 0]], [[1, 0, 0]]])                  # the 9 and the 5 are padding
    assert masked_max(x, mask, dim=-1).tolist() == [[1.0], [-3.0]]
    assert masked_mean(x * mask, mask, dim=-1).tolist() == [[-0.5], [-3.0]]
    # A row without tokens pools to 0 either way, not to the dtype's lowest value.
    empty = torch.tensor([[[0, 0, 0]], [[1, 0, 0]]])
    assert masked_max(x, empty, dim=-1).tolist() == [[0.0], [-3.0]]
    assert masked_mean(x * empty, empty, dim=-1).tolist() == [[0.0], [-3.0]]
    wide = torch.cat([x, -x], dim=1)                                  # [B=2, D=2, L=3]
    assert masked_max(wide, empty, dim=-1).tolist() == [[0.0, 0.0], [-3.0, 3.0]]


@pytest.mark.parametrize("space", ["paper", "matching"])
def test_a_max_pooled_student_ignores_padding_and_differs_from_the_mean(space):
    torch.manual_seed(0)
    cfg = tiny_config(is_pair=space == "matching", space=space, pooling="max")
    arch = {**random_arch(cfg, seed=2), "depth": 2}
    child = AdaBertStudent(cfg, arch).eval()
    ids_a, ids_b = torch.randint(1, 40, (3, 7)), torch.randint(1, 40, (3, 5))
    pad = lambda ids: torch.nn.functional.pad(ids, (0, 4))           # noqa: E731 (pad id 0, masked)
    mask = lambda ids: (ids != 0).long()                             # noqa: E731
    b = (ids_b, None) if cfg.is_pair else (None, None)
    plain = child(ids_a, None, *b).logits
    b_padded = (pad(ids_b), mask(pad(ids_b))) if cfg.is_pair else (None, None)
    torch.testing.assert_close(child(pad(ids_a), mask(pad(ids_a)), *b_padded).logits, plain)
    mean_pooled = AdaBertStudent(tiny_config(is_pair=cfg.is_pair, space=space), arch).eval()
    mean_pooled.load_state_dict(child.state_dict())
    assert not torch.allclose(mean_pooled(ids_a, None, *b).logits, plain)
    # The gradient reaches the cells through the max.
    child.train()(ids_a, None, *b).logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in child.cells[0].parameters())


def test_files_without_pooling_load_mean_pooled_and_pooling_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    arch = {**random_arch(cfg, seed=1), "depth": 2}
    child = AdaBertStudent(cfg, arch).eval()
    save_pretrained(child, tmp_path, {"task": "SST-2"})
    doc = json.loads((tmp_path / "architecture.json").read_text())
    assert doc["student_config"]["pooling"] == "mean"
    del doc["student_config"]["pooling"]                             # as written before the field existed
    (tmp_path / "architecture.json").write_text(json.dumps(doc))
    ids = torch.randint(1, 40, (3, 7))
    loaded = from_pretrained(tmp_path)
    assert loaded.config.pooling == "mean" and torch.equal(loaded(ids).logits, child(ids).logits)
    assert StudentConfig.from_dict(tiny_config(pooling="max").to_dict()).pooling == "max"
    with pytest.raises(UserError, match=r"student config: pooling must be one of \['mean', 'max'\], got 'avg'"):
        tiny_config(pooling="avg")


@pytest.mark.parametrize("norm_texts", [True, False])
def test_the_matching_head_keeps_its_classifier_input_at_unit_scale(norm_texts):
    """u * v squares the texts' scale: a search whose cells grew their outputs exploded its loss (MRPC,
    classifier inputs past 1,000) until the texts were layer-normalised first."""
    torch.manual_seed(0)
    cfg = tiny_config(is_pair=True, space="matching", norm_texts=norm_texts)
    child = AdaBertStudent(cfg, {**{label: "skip" for label in cfg.edge_labels}, "depth": 1}).eval()
    with torch.no_grad():
        child.embed.norm.weight.mul_(100.0)                      # texts at 100x their scale
    seen = []
    child.classifier.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    child(torch.randint(1, 40, (4, 7)), None, torch.randint(1, 40, (4, 5)), None)
    largest = seen[0].abs().max().item()
    if norm_texts:   # no entry of a layer-normalised D-vector exceeds sqrt(D - 1): none of u * v exceeds D - 1
        assert largest <= D - 1 + 1e-4
    else:
        assert largest > 100.0


def test_a_retraining_keeps_the_pair_space_between_pair_tasks_only():
    on = lambda is_pair: SimpleNamespace(spec=SimpleNamespace(is_pair=is_pair))  # noqa: E731
    assert retrain_space(tiny_config(is_pair=True), on(True)) == "paper"        # a paper-space pair structure
    assert retrain_space(tiny_config(is_pair=True, space="matching"), on(True)) == "matching"
    assert retrain_space(tiny_config(), on(True)) == "matching"                 # a single-text cell on pairs
    assert retrain_space(tiny_config(is_pair=True, space="matching"), on(False)) == "paper"
    # A cell that uses align cannot move to a single-text task: one clear error.
    arch = {**{label: "skip" for label in edge_labels(3)}, "edge_3_1": "align", "depth": 1}
    with pytest.raises(UserError, match="align.*text-pair"):
        AdaBertStudent(tiny_config(space=resolve_space("auto", False)), arch)
