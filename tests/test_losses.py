"""Distillation loss and teacher-ensemble weights against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from egodistill.student.losses import dataset_weights, ensemble_logits, kd_loss, student_loss


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_the_formula_by_hand():
    s, t, temp = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0
    p_t, p_s = softmax([x / temp for x in t]), softmax([x / temp for x in s])
    expected = temp**2 * sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_a_batch_mean_and_zero_for_equal_logits():
    a, b = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.5, 2.0]])
    both = kd_loss(torch.cat([a, a]), torch.cat([b, a]), 1.0)
    assert both.item() == pytest.approx(kd_loss(a, b, 1.0).item() / 2, rel=1e-6)
    assert kd_loss(b, b, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_at_high_temperature_tends_to_the_logit_matching_limit():
    # T^2 KL -> sum((d - mean d)^2) / (2C) with d = student - teacher logits (Hinton et al. 2015).
    # float64: at T=1000 the KL is ~1e-6 and float32 cancellation would swamp it.
    s, t = torch.tensor([[0.3, -1.2, 2.0, 0.1]], dtype=torch.float64), torch.tensor([[1.0, 0.0, -0.5, 0.4]], dtype=torch.float64)
    d = s - t
    limit = ((d - d.mean()) ** 2).sum().item() / (2 * 4)
    assert kd_loss(s, t, 1000.0).item() == pytest.approx(limit, rel=1e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_kd_loss_refuses_a_temperature_that_is_not_positive_and_finite(temperature):
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 3), torch.zeros(1, 3), temperature)


TEACHERS = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # [batch 1, 2 teachers, 2 classes]


def test_uniform_is_the_mean_of_teacher_logits():
    out = ensemble_logits(TEACHERS, None, "uniform", 1.0)
    assert out.tolist() == [[1.0, 1.0]]


def test_per_sample_weights_are_a_softmin_of_each_teachers_cross_entropy():
    ce_a, ce_b = math.log(1 + math.exp(-2)), math.log(1 + math.exp(2))  # label 0: teacher a is right
    tau = 0.5
    w_a = math.exp(-ce_a / tau) / (math.exp(-ce_a / tau) + math.exp(-ce_b / tau))
    out = ensemble_logits(TEACHERS, torch.tensor([0]), "per-sample", tau)
    assert out[0].tolist() == pytest.approx([2 * w_a, 2 * (1 - w_a)], rel=1e-5)


def test_per_sample_falls_back_to_uniform_for_unlabelled_samples():
    batch = TEACHERS.repeat(2, 1, 1)
    out = ensemble_logits(batch, torch.tensor([-1, 1]), "per-sample", 1.0)
    assert out[0].tolist() == [1.0, 1.0]
    assert out[1, 1] > out[1, 0]  # label 1: teacher b counts more


def test_tau_edge_cases_pick_the_best_teacher_or_weigh_evenly():
    labels = torch.tensor([0])
    assert ensemble_logits(TEACHERS, labels, "per-sample", 0.0).tolist() == [[2.0, 0.0]]
    assert ensemble_logits(TEACHERS, labels, "per-sample", float("inf")).tolist() == [[1.0, 1.0]]
    assert ensemble_logits(TEACHERS, labels, "per-sample", 1e6)[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    tied = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # two equally good teachers share tau=0
    assert ensemble_logits(tied, labels, "per-sample", 0.0).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="tau"):
        ensemble_logits(TEACHERS, labels, "per-sample", -1.0)


def test_dataset_weights_are_a_softmin_of_mean_cross_entropy_over_held_out_samples():
    held = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]])  # teacher a right then wrong; b always unsure
    labels = torch.tensor([0, 0])
    mean_a = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2
    mean_b = math.log(2)
    w_a = math.exp(-mean_a) / (math.exp(-mean_a) + math.exp(-mean_b))
    weights = dataset_weights(held, labels, 1.0)
    assert weights.tolist() == pytest.approx([w_a, 1 - w_a], rel=1e-5)
    out = ensemble_logits(TEACHERS, torch.tensor([1]), "dataset", 1.0, weights)
    assert out[0].tolist() == pytest.approx([2 * w_a, 2 * (1 - w_a)], rel=1e-5)  # fixed: the batch label does not matter


def test_dataset_weighting_without_weights_and_unknown_schemes_are_refused():
    with pytest.raises(ValueError, match="dataset"):
        ensemble_logits(TEACHERS, torch.tensor([0]), "dataset", 1.0)
    with pytest.raises(ValueError, match="unknown weighting"):
        ensemble_logits(TEACHERS, torch.tensor([0]), "softmax", 1.0)
    with pytest.raises(ValueError, match="labelled"):
        dataset_weights(TEACHERS, torch.tensor([-1]), 1.0)


def test_student_loss_averages_heads_and_unlabelled_samples_only_get_kd():
    student = {"verb": torch.tensor([[0.5, -0.5]]), "noun": torch.tensor([[0.0, 1.0, 0.0]])}
    teachers = {"verb": torch.tensor([[[1.0, 0.0]]]), "noun": torch.tensor([[[0.0, 0.0, 2.0]]])}
    unlabelled = {"verb": torch.tensor([-1]), "noun": torch.tensor([-1])}
    loss = student_loss(student, unlabelled, teachers, temperature=2.0, kd_weight=0.5, gt_weight=100.0)
    kd = [kd_loss(student[h], teachers[h][:, 0], 2.0).item() for h in student]
    assert loss.item() == pytest.approx(0.5 * sum(kd) / 2, rel=1e-6)
    labelled = {"verb": torch.tensor([0]), "noun": torch.tensor([-1])}
    ce_verb = math.log(1 + math.exp(-1.0))
    with_gt = student_loss(student, labelled, teachers, temperature=2.0, kd_weight=0.5, gt_weight=2.0)
    assert with_gt.item() == pytest.approx((0.5 * sum(kd) + 2.0 * ce_verb) / 2, rel=1e-5)
    assert student_loss(student, labelled, None).item() == pytest.approx(ce_verb / 2, rel=1e-5)  # no teachers: GT only
