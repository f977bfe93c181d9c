"""The AdaBERT objective on tiny inputs whose values can be computed by hand."""

import math

import pytest
import torch

from nni_adabert.nas.losses import (DEFAULT_BETA, adabert_loss, attentive_weights, ce_loss, distillation_loss,
                                    efficiency_loss, final_kd_loss, kd_targets, layer_mapping, probe_kd_loss,
                                    soft_cross_entropy, total_loss)
from nni_adabert.data.encoding import IGNORE_LABEL


def _log_softmax(xs):
    m = max(xs)
    z = math.log(sum(math.exp(x - m) for x in xs)) + m
    return [x - z for x in xs]


def _softmax(xs):
    return [math.exp(v) for v in _log_softmax(xs)]


@pytest.mark.parametrize("k, j, expected", [
    (4, 6, [2, 3, 5, 6]),
    (3, 6, [2, 4, 6]),
    (6, 6, [1, 2, 3, 4, 5, 6]),
    (1, 6, [6]),
    (8, 6, [1, 2, 3, 3, 4, 5, 6, 6]),
    (3, 12, [4, 8, 12]),
    (5, 12, [3, 5, 8, 10, 12]),   # ceil(2.4)=3, ceil(4.8)=5, ceil(7.2)=8, ceil(9.6)=10: not int()
])
def test_layer_mapping_is_ceil_and_ends_at_teacher_top(k, j, expected):
    assert layer_mapping(k, j) == expected
    assert layer_mapping(k, j) == [math.ceil(m * j / k) for m in range(1, k + 1)]


def test_kd_targets_use_teacher_prediction_for_unlabeled():
    teacher = torch.tensor([[[0.0, 1.0], [3.0, 0.0]],    # final layer predicts 0
                            [[0.0, 1.0], [0.0, 2.0]]])   # final layer predicts 1
    labels = torch.tensor([1, IGNORE_LABEL])
    assert kd_targets(labels, teacher).tolist() == [1, 1]
    assert kd_targets(torch.tensor([IGNORE_LABEL, IGNORE_LABEL]), teacher).tolist() == [0, 1]


def test_attentive_weights_per_example_by_hand():
    # J=2, K=2 -> layers [1, 2]. Example 0 (y=0): layer 1 uniform, layer 2 confident in 0.
    # Example 1 (y=1): layer 1 confident in 1, layer 2 uniform: the weights flip.
    teacher = torch.tensor([[[0.0, 0.0], [2.0, 0.0]],
                            [[0.0, 2.0], [0.0, 0.0]]])
    w = attentive_weights(teacher, torch.tensor([0, 1]), 2)
    ce_uniform, ce_conf = math.log(2.0), -_log_softmax([2.0, 0.0])[0]
    w_conf = math.exp(-ce_conf) / (math.exp(-ce_conf) + math.exp(-ce_uniform))
    assert w.shape == (2, 2)
    assert w[0].tolist() == pytest.approx([1 - w_conf, w_conf], abs=1e-6)
    assert w[1].tolist() == pytest.approx([w_conf, 1 - w_conf], abs=1e-6)


def test_soft_cross_entropy_by_hand_and_temperature():
    t, s = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    p, log_q = _softmax([2.0, 0.0]), _log_softmax([1.0, 0.0])
    assert soft_cross_entropy(t, s).item() == pytest.approx(-(p[0] * log_q[0] + p[1] * log_q[1]), abs=1e-6)
    p2, log_q2 = _softmax([1.0, 0.0]), _log_softmax([0.5, 0.0])
    assert soft_cross_entropy(t, s, temperature=2.0).item() == pytest.approx(
        -(p2[0] * log_q2[0] + p2[1] * log_q2[1]), abs=1e-6)


def test_probe_kd_loss_by_hand():
    # B=1, C=2, J=2, student K=2: cell 1 <- teacher layer 1, cell 2 <- layer 2 (y = 0).
    teacher = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    s1, s2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    ce1, ce2 = math.log(2.0), -_log_softmax([2.0, 0.0])[0]
    w1 = math.exp(-ce1) / (math.exp(-ce1) + math.exp(-ce2))
    kd1 = math.log(2.0)                                   # teacher uniform vs student uniform
    p, log_q = _softmax([2.0, 0.0]), _log_softmax([1.0, 0.0])
    kd2 = -(p[0] * log_q[0] + p[1] * log_q[1])
    expected = w1 * kd1 + (1 - w1) * kd2
    got = probe_kd_loss([s1, s2], teacher, torch.tensor([0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # An unlabeled example with the same teacher gets the teacher's argmax (0) as y: same value.
    assert probe_kd_loss([s1, s2], teacher, torch.tensor([IGNORE_LABEL])).item() == pytest.approx(expected, abs=1e-6)


def test_probe_kd_loss_is_mean_over_batch_and_uses_mapping():
    torch.manual_seed(0)
    teacher = torch.randn(3, 6, 4)
    probes = [torch.randn(3, 4) for _ in range(4)]
    labels = torch.tensor([0, 3, 1])
    full = probe_kd_loss(probes, teacher, labels)
    per_example = [probe_kd_loss([p[i:i + 1] for p in probes], teacher[i:i + 1], labels[i:i + 1]) for i in range(3)]
    assert full.item() == pytest.approx(sum(x.item() for x in per_example) / 3, abs=1e-6)
    # Only layers j(m) = [2, 3, 5, 6] matter: changing layers 1 and 4 changes nothing.
    changed = teacher.clone()
    changed[:, [0, 3], :] = torch.randn(3, 2, 4)
    assert probe_kd_loss(probes, changed, labels).item() == pytest.approx(full.item(), abs=1e-6)
    changed[:, 4, 0] += 1.0   # layer 5 = j(3) does matter
    assert probe_kd_loss(probes, changed, labels).item() != pytest.approx(full.item(), abs=1e-4)


def test_distillation_loss_weights_depth_terms():
    torch.manual_seed(1)
    teacher, labels = torch.randn(2, 4, 3), torch.tensor([0, 2])
    probes = [torch.randn(2, 3) for _ in range(3)]
    kd2, kd3 = probe_kd_loss(probes[:2], teacher, labels), probe_kd_loss(probes, teacher, labels)
    assert distillation_loss(probes, [(3, None)], teacher, labels).item() == pytest.approx(kd3.item())
    w = torch.tensor([0.25, 0.75], requires_grad=True)
    mixed = distillation_loss(probes, [(2, w[0]), (3, w[1])], teacher, labels)
    assert mixed.item() == pytest.approx(0.25 * kd2.item() + 0.75 * kd3.item(), abs=1e-6)
    mixed.backward()
    assert w.grad.tolist() == pytest.approx([kd2.item(), kd3.item()], abs=1e-6)  # gradient reaches the depth weights


def test_ce_loss_ignores_unlabeled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, IGNORE_LABEL, 1])
    expected = (-_log_softmax([2.0, 0.0])[0] + math.log(2.0)) / 2
    assert ce_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    none = ce_loss(logits, torch.full((3,), IGNORE_LABEL))
    assert none.item() == 0.0 and none.requires_grad


def test_efficiency_loss_by_hand_and_gradients():
    cost = torch.tensor([2.0, 1.0, 0.0])
    op_w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], requires_grad=True)
    depth_w = torch.tensor([0.0, 0.0, 1.0, 0.0], requires_grad=True)      # K = 3 of K_max = 4
    loss = efficiency_loss(op_w, depth_w, cost)
    assert loss.item() == pytest.approx(3 / 4 * (2.0 + 0.5) / 2, abs=1e-6)  # mean over the 2 edges
    loss.backward()
    assert torch.allclose(op_w.grad, torch.tensor([[0.75 * 2 / 2, 0.75 / 2, 0.0]] * 2))
    assert depth_w.grad.tolist() == pytest.approx([k / 4 * 2.5 / 2 for k in range(1, 5)])


def test_total_loss_weights_and_adabert_loss():
    ce, kd, eff = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.5)
    assert total_loss(ce, kd, eff).item() == pytest.approx(0.2 * 1 + 0.8 * 2 + DEFAULT_BETA * 0.5)
    assert total_loss(ce, kd, eff, beta=4).item() == pytest.approx(0.2 * 1 + 0.8 * 2 + 4 * 0.5)
    assert total_loss(ce, kd, None, gamma=0.5, beta=8).item() == pytest.approx(1.5)
    torch.manual_seed(2)
    logits, probes = torch.randn(2, 3), [torch.randn(2, 3), torch.randn(2, 3)]
    teacher, labels = torch.randn(2, 5, 3), torch.tensor([1, IGNORE_LABEL])
    parts = adabert_loss(logits, probes, [(2, None)], teacher, labels, eff, gamma=0.8, beta=4.0)
    assert parts.ce.item() == pytest.approx(ce_loss(logits, labels).item())
    assert parts.kd.item() == pytest.approx(probe_kd_loss(probes, teacher, labels).item())
    assert parts.total.item() == pytest.approx(0.2 * parts.ce.item() + 0.8 * parts.kd.item() + 2.0, abs=1e-5)


def test_final_kd_loss_is_base_kd_and_adabert_loss_can_use_it():
    torch.manual_seed(5)
    logits, probes = torch.randn(3, 2), [torch.randn(3, 2), torch.randn(3, 2)]
    teacher, labels = torch.randn(3, 4, 2), torch.tensor([0, IGNORE_LABEL, 1])
    by_hand = sum(-(_softmax(teacher[b, -1].tolist())[c] * _log_softmax(logits[b].tolist())[c])
                  for b in range(3) for c in range(2)) / 3
    assert final_kd_loss(logits, teacher).item() == pytest.approx(by_hand, abs=1e-6)
    base = adabert_loss(logits, probes, [(2, None)], teacher, labels, None, probe_kd=False, final_kd=True)
    assert base.kd.item() == pytest.approx(by_hand, abs=1e-6)           # probes and attentive weights unused
    assert base.ce.item() == pytest.approx(ce_loss(logits, labels).item())
    probe = probe_kd_loss(probes, teacher, labels).item()
    full = adabert_loss(logits, probes, [(2, None)], teacher, labels, None)
    assert full.kd.item() == pytest.approx(probe)
    both = adabert_loss(logits, probes, [(2, None)], teacher, labels, None, final_kd=True)
    assert both.kd.item() == pytest.approx(probe + by_hand, abs=1e-6)
    with pytest.raises(ValueError, match="probe_kd or final_kd"):
        adabert_loss(logits, probes, [(2, None)], teacher, labels, None, probe_kd=False)


def test_final_kd_mse_is_the_logits_squared_difference_and_ignores_temperature():
    torch.manual_seed(6)
    logits = torch.randn(3, 2, requires_grad=True)
    probes, teacher = [torch.randn(3, 2)], torch.randn(3, 4, 2)
    labels = torch.tensor([0, IGNORE_LABEL, 1])
    by_hand = sum((teacher[b, -1, c].item() - logits[b, c].item()) ** 2 for b in range(3) for c in range(2)) / 3
    for temperature in (1.0, 3.0):
        assert final_kd_loss(logits, teacher, temperature, mse=True).item() == pytest.approx(by_hand, rel=1e-6)
    parts = adabert_loss(logits, probes, [(1, None)], teacher, labels, None, final_kd=True, final_kd_mse=True)
    assert parts.kd.item() == pytest.approx(probe_kd_loss(probes, teacher, labels).item() + by_hand, rel=1e-6)
    parts.kd.backward()   # d/ds mean_x ||s - t||^2 = 2 (s - t) / B: it pulls the logits to the teacher's own
    assert torch.allclose(logits.grad, 2 * (logits.detach() - teacher[:, -1]) / 3, atol=1e-6)


@pytest.mark.parametrize("final_kd", [False, True])
def test_adabert_loss_with_depth_logits_adds_the_mean_child_loss_of_every_depth(final_kd):
    torch.manual_seed(7)
    probes = [torch.randn(4, 2) for _ in range(3)]
    depth_logits = [torch.randn(4, 2) for _ in range(3)]
    teacher, labels = torch.randn(4, 6, 2), torch.tensor([0, IGNORE_LABEL, 1, 1])
    gate = torch.tensor([0.0, 1.0, 0.0])                             # the sampled depth is 2
    terms = [(k, gate[k - 1]) for k in (1, 2, 3)]
    plain = adabert_loss(depth_logits[1], probes, terms, teacher, labels, None, final_kd=final_kd)
    assert plain.every_depth is None
    parts = adabert_loss(depth_logits[1], probes, terms, teacher, labels, None, final_kd=final_kd,
                         depth_logits=depth_logits)
    children = [adabert_loss(depth_logits[k - 1], probes[:k], [(k, None)], teacher, labels, None,
                             final_kd=final_kd).total.item() for k in (1, 2, 3)]
    assert parts.every_depth.item() == pytest.approx(sum(children) / 3, abs=1e-6)
    assert parts.total.item() == pytest.approx(plain.total.item() + sum(children) / 3, abs=1e-6)
    assert plain.total.item() == pytest.approx(children[1], abs=1e-6)  # the gates pick depth 2's child
