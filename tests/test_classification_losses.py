"""The methods' loss terms (pipeline.methods.<family>) on hand-computed cases: classification, and the
regression analogues."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.methods.abstention import (abstain_scores, gambler_predictions, selective_risk,
                                         softmax_confidence_abstention)
from pipeline.methods.baselines import hinton_kd_loss, soft_target_loss
from pipeline.methods.gaussian import gaussian_nll
from pipeline.methods.knowledge_adjustment import gambler_loss, probability_shift
from pipeline.methods.label_revision import (lr_ds_loss, revise_labels, revise_regression_targets,
                                             select_for_distillation, teacher_reliability)
from pipeline.methods.self_regulation import (SignificanceCounter, self_regulated_ce, self_regulated_mask,
                                              significance_kd_loss)


def _f(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


# --------------------------------------------------------------------------- Hinton KD


def test_hinton_kd_equals_the_manual_formula():
    s, t, y = _f([1.0, 0.0], [0.0, 2.0]), _f([2.0, 0.0], [0.0, 0.0]), _y(0, 0)
    T, a = 2.0, 0.3
    total = 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        ce = -math.log(_softmax(si)[yi])
        qs, qt = _softmax([v / T for v in si]), _softmax([v / T for v in ti])
        kl = sum(pt * math.log(pt / ps) for pt, ps in zip(qt, qs))
        total += a * ce + (1 - a) * T**2 * kl
    assert hinton_kd_loss(s, t, y, T, a).item() == pytest.approx(total / 2, rel=1e-12)


def test_hinton_kd_with_alpha_one_is_plain_ce_and_teacher_gets_no_gradient():
    s, t, y = _f([1.0, -1.0, 0.5]), _f([0.0, 3.0, 0.0]).requires_grad_(), _y(2)
    loss = hinton_kd_loss(s, t, y, 4.0, 1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(s, y).item())
    assert not loss.requires_grad  # teacher is detached, student here has no grad either


# --------------------------------------------------------------------------- label revision


def test_revised_label_hand_example():
    p_t, y, eta = _f([0.7, 0.2, 0.1]), _y(1), 0.5  # teacher wrong: max 0.7, p_y 0.2
    beta = 0.5 / (0.7 - 0.2 + 1)  # = 1/3
    r = revise_labels(p_t, y, eta)
    assert r[0].tolist() == pytest.approx([beta * 0.7, beta * 0.2 + 1 - beta, beta * 0.1])
    assert r.sum().item() == pytest.approx(1.0)
    assert r.argmax().item() == 1


@pytest.mark.parametrize("eta", [0.1, 0.5, 0.9, 0.999])
def test_revised_label_argmax_is_always_the_true_class_random_teachers(eta):
    g = torch.Generator().manual_seed(0)
    n, m = 2000, 10
    # sharp random teachers: most are confidently wrong
    p_t = F.softmax(5 * torch.randn(n, m, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, m, (n,), generator=g)
    assert (p_t.argmax(1) != y).float().mean() > 0.8
    r = revise_labels(p_t, y, eta)
    assert torch.equal(r.argmax(1), y)
    assert torch.allclose(r.sum(1), torch.ones(n, dtype=torch.float64))
    # the margin is at least 1 - eta (proof in the docstring)
    top_other = r.scatter(1, y.unsqueeze(1), -1.0).max(1).values
    assert ((r.gather(1, y.unsqueeze(1)).squeeze(1) - top_other) >= 1 - eta - 1e-12).all()


def test_revised_label_argmax_adversarial_teachers():
    m = 5
    # all mass on one wrong class, p_y = 0; and a near tie where the wrong class barely wins
    p_t = torch.zeros(m, m, dtype=torch.float64)
    p_t[torch.arange(m), (torch.arange(m) + 1) % m] = 1.0
    y = torch.arange(m)
    r = revise_labels(p_t, y, 0.999)
    assert torch.equal(r.argmax(1), y)
    assert r[0, 0].item() == pytest.approx(1 - 0.999 / 2) and r[0, 1].item() == pytest.approx(0.999 / 2)
    tie = revise_labels(_f([0.5 + 1e-9, 0.5 - 1e-9]), _y(1), 0.999)
    assert tie.argmax().item() == 1
    with pytest.raises(ValueError):
        revise_labels(p_t, y, 1.0)
    with pytest.raises(ValueError):
        revise_labels(p_t, y, 0.0)


def test_soft_target_loss_is_cross_entropy_against_soft_targets():
    s, tgt = _f([0.0, math.log(3.0)]), _f([0.25, 0.75])  # softmax(s) = [1/4, 3/4]
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert soft_target_loss(s, tgt).item() == pytest.approx(expected)
    y = _y(1)
    assert soft_target_loss(s, F.one_hot(y, 2).double()).item() == pytest.approx(F.cross_entropy(s, y).item())


# --------------------------------------------------------------------------- data selection


def test_teacher_reliability_is_log_prob_of_true_class():
    p_t, y = _f([0.7, 0.3], [0.1, 0.9], [1.0, 0.0]), _y(0, 0, 1)
    s = teacher_reliability(p_t, y)
    assert s[:2].tolist() == pytest.approx([math.log(0.7), math.log(0.1)])
    assert math.isfinite(s[2].item()) and s[2] < s[1]


def test_selection_picks_the_top_fraction_with_deterministic_ties():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, float("nan"), 0.3])
    assert select_for_distillation(scores, 0.5).tolist() == [False, True, True, True, False, False]
    # tie between index 1 and 3 at the cut: lower index wins
    assert select_for_distillation(scores, 1 / 6).tolist() == [False, True, False, False, False, False]
    assert select_for_distillation(scores, 0.0).sum() == 0
    assert select_for_distillation(scores, 1.0).all()
    with pytest.raises(ValueError):
        select_for_distillation(scores, 1.5)


def test_lr_ds_loss_distils_selected_and_uses_ce_on_the_rest():
    s = _f([1.0, 0.0, -1.0], [0.0, 2.0, 0.0])
    p_t = _f([0.1, 0.8, 0.1], [0.2, 0.2, 0.6])
    y, eta, T = _y(0, 1), 0.6, 2.0
    mask = torch.tensor([True, False])
    r0 = revise_labels(p_t, y, eta)[0].tolist()
    q0 = _softmax([v / T for v in s[0].tolist()])
    selected = T**2 * -sum(ri * math.log(qi) for ri, qi in zip(r0, q0))
    other = -math.log(_softmax(s[1].tolist())[1])
    assert lr_ds_loss(s, p_t, y, mask, eta, T).item() == pytest.approx((selected + other) / 2)
    # alpha mixes hard CE into the selected sample only
    ce0 = -math.log(_softmax(s[0].tolist())[0])
    got = lr_ds_loss(s, p_t, y, mask, eta, T, alpha=0.25).item()
    assert got == pytest.approx((0.25 * ce0 + 0.75 * selected + other) / 2)
    # nothing selected: plain CE
    assert lr_ds_loss(s, p_t, y, torch.zeros(2, dtype=torch.bool), eta, T).item() == pytest.approx(
        F.cross_entropy(s, y).item())


# --------------------------------------------------------------------------- probability shift


def test_probability_shift_swaps_true_class_with_the_max_not_top1_with_top2():
    # argmax is class 0 (0.5), top-2 is class 1 (0.3), true class is 3 (0.05)
    p_t, y = _f([0.5, 0.3, 0.15, 0.05]), _y(3)
    shifted = probability_shift(p_t, y)
    assert shifted[0].tolist() == [0.05, 0.3, 0.15, 0.5]
    assert shifted.argmax().item() == 3
    # the top1 <-> top2 swap would give [0.3, 0.5, 0.15, 0.05]: argmax 1, still not the true class
    wrong = p_t.clone()
    wrong[0, [0, 1]] = wrong[0, [1, 0]]
    assert wrong.argmax().item() == 1 != y.item()
    assert p_t[0].tolist() == [0.5, 0.3, 0.15, 0.05]  # input left untouched


def test_probability_shift_random_batch_properties():
    g = torch.Generator().manual_seed(1)
    n, m = 500, 6
    p_t = F.softmax(3 * torch.randn(n, m, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, m, (n,), generator=g)
    top = p_t.argmax(1)
    out = probability_shift(p_t, y)
    rows = torch.arange(n)
    wrong = top != y
    assert wrong.any() and (~wrong).any()
    assert torch.equal(out[~wrong], p_t[~wrong])  # correct samples unchanged
    assert torch.equal(out.argmax(1), y)
    assert torch.equal(out[rows, y], p_t[rows, top])  # max moved onto y
    assert torch.equal(out[rows[wrong], top[wrong]], p_t[rows[wrong], y[wrong]])  # old p_y to old argmax
    untouched = torch.ones(n, m, dtype=torch.bool)
    untouched[rows, y] = False
    untouched[rows, top] = False
    assert torch.equal(out[untouched], p_t[untouched])


def test_probability_shift_min_label_prob_keeps_the_teacher_where_the_label_is_implausible():
    # row 0: label 3 has p 0.05 (< 0.1): kept as the teacher said; row 1: label 1 has p 0.3: shifted
    p_t, y = _f([0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]), _y(3, 1)
    out = probability_shift(p_t, y, min_label_prob=0.1)
    assert out[0].tolist() == [0.5, 0.3, 0.15, 0.05]
    assert out[1].tolist() == [0.3, 0.5, 0.15, 0.05]
    # at 0 (the paper) both rows are shifted
    assert probability_shift(p_t, y)[0].tolist() == [0.05, 0.3, 0.15, 0.5]


# --------------------------------------------------------------------------- gambler / abstention


def test_gambler_loss_matches_the_formula_and_validates_o():
    z = _f([1.0, 0.0, 0.5, 2.0], [0.0, 3.0, 0.0, -1.0])  # m = 3 classes + abstain
    y, o = _y(1, 1), 2.2
    expected = 0.0
    for zi, yi in zip(z.tolist(), y.tolist()):
        p = _softmax(zi)
        expected += -math.log(p[yi] + p[3] / o)
    assert gambler_loss(z, y, o).item() == pytest.approx(expected / 2, rel=1e-12)
    for bad in (1.0, 3.0, 0.5, 4.0):
        with pytest.raises(ValueError):
            gambler_loss(z, y, bad)


def test_abstain_scores_and_softmax_confidence():
    z = _f([0.0, 0.0, math.log(2.0)])  # softmax [1/4, 1/4, 1/2]
    assert abstain_scores(z).item() == pytest.approx(0.5)
    assert gambler_predictions(_f([0.0, 1.0, 9.0])).item() == 1
    assert softmax_confidence_abstention(_f([0.0, math.log(3.0)])).item() == pytest.approx(0.25)


def test_selective_risk_full_coverage_is_plain_error_and_abstention_helps():
    pred, y = _y(0, 1, 2, 0, 1), _y(0, 1, 0, 0, 2)  # 2 errors out of 5, at indices 2 and 4
    score = torch.tensor([0.1, 0.2, 0.9, 0.0, 0.8])
    risk = selective_risk(pred, y, score, coverages=(1.0, 0.8, 0.6, 0.2))
    assert risk[1.0] == pytest.approx(0.4)
    assert risk[0.8] == pytest.approx(1 / 4)  # drops index 2
    assert risk[0.6] == 0.0 and risk[0.2] == 0.0
    assert set(selective_risk(pred, y, score)) == {1.0, 0.95, 0.9, 0.8, 0.7, 0.5}
    with pytest.raises(ValueError):
        selective_risk(pred, y, score, coverages=(0.0,))


def test_aurc_is_the_mean_risk_over_every_coverage_and_rewards_a_better_ranking():
    import numpy as np

    from pipeline.metrics import aurc, classification_metrics

    correct = np.array([True, True, False, True, False])  # 2 errors, at indices 2 and 4
    # kept in order 3, 0, 1, 4, 2: risks 0, 0, 0, 1/4, 2/5
    assert aurc(correct, [0.1, 0.2, 0.9, 0.0, 0.8]) == pytest.approx((0.25 + 0.4) / 5)
    worst = aurc(correct, [0.9, 0.8, 0.0, 0.7, 0.1])  # the errors kept first: 1, 1, 2/3, 2/4, 2/5
    assert worst == pytest.approx((1 + 1 + 2 / 3 + 0.5 + 0.4) / 5)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), y] += rng.normal(1.0, 2.0, 400)  # confidence tracks correctness
    m = classification_metrics(logits, y)
    assert m["aurc_softmax"] < m["error_rate"]  # better than keeping samples at random
    shuffled = aurc(logits.argmax(1) == y, rng.permutation(400))
    assert abs(shuffled - m["error_rate"]) < 0.1 and m["aurc_softmax"] < shuffled


# --------------------------------------------------------------------------- self-regulated learning


def test_self_regulated_confident_right_sample_gets_zero_gradient():
    # 0: confidently right (p_y ~ 0.98); 1: misclassified; 2: right but p_y = 0.6 < tau
    z = _f([4.0, 0.0], [2.0, 0.0], [math.log(1.5), 0.0]).requires_grad_()
    y = _y(0, 1, 0)
    loss, mask = self_regulated_ce(z, y, tau=0.9)
    assert mask.tolist() == [False, True, True]
    expected = (-math.log(_softmax([2.0, 0.0])[1]) - math.log(0.6)) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.equal(z.grad[0], torch.zeros(2, dtype=torch.float64))
    assert z.grad[1].abs().sum() > 0 and z.grad[2].abs().sum() > 0


def test_self_regulated_ce_with_no_participants_is_zero_not_nan():
    z = _f([5.0, 0.0], [0.0, 5.0]).requires_grad_()
    loss, mask = self_regulated_ce(z, _y(0, 1), tau=0.5)
    assert not mask.any() and loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    assert self_regulated_mask(_f([5.0, 0.0]), _y(0), tau=0.999).tolist() == [True]


def test_significance_counter_accumulates_and_normalises():
    c = SignificanceCounter(4)
    assert c.normalised().tolist() == [0.0] * 4
    c.update(torch.tensor([0, 1, 2]), torch.tensor([True, True, False]))  # epoch 1, batch 1
    c.update(torch.tensor([3, 1]), torch.tensor([False, True]))  # epoch 1, batch 2
    c.update(torch.tensor([1, 2, 1]), torch.tensor([True, True, True]))  # repeated index counts twice
    assert c.counts.tolist() == [1, 4, 1, 0]
    assert c.normalised().tolist() == pytest.approx([0.25, 1.0, 0.25, 0.0])


def test_significance_kd_loss_weights_per_sample_hinton_losses():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    y = _y(0, 3, 1)
    ones = significance_kd_loss(s, t, y, torch.ones(3), 3.0, 0.4)
    assert ones.item() == pytest.approx(hinton_kd_loss(s, t, y, 3.0, 0.4).item(), rel=1e-6)
    w = torch.tensor([1.0, 0.0, 0.5])
    per = [hinton_kd_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], 3.0, 0.4).item() for i in range(3)]
    s = s.clone().requires_grad_()
    loss = significance_kd_loss(s, t, y, w, 3.0, 0.4)
    assert loss.item() == pytest.approx((per[0] + 0.5 * per[2]) / 3, rel=1e-6)
    loss.backward()
    assert torch.equal(s.grad[1], torch.zeros(4))


# --------------------------------------------------------------------------- regression analogues


def test_revised_regression_target_shrinks_toward_y_as_the_residual_grows():
    y = torch.tensor([[1.0], [1.0], [1.0]])
    yt = torch.tensor([[1.0], [2.0], [101.0]])
    tgt = revise_regression_targets(y, yt, scale=1.0).ravel().tolist()
    w = math.exp(-1.0)
    assert tgt[0] == pytest.approx(1.0)
    assert tgt[1] == pytest.approx(w * 2.0 + (1 - w) * 1.0)
    assert tgt[2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        revise_regression_targets(y, yt, scale=0.0)


def test_gaussian_nll_matches_formula_and_torch():
    mean, log_var, y = _f([0.0], [1.0]), _f([0.0], [math.log(4.0)]), _f([1.0], [3.0])
    expected = (0.5 * (0 + 1) + 0.5 * (math.log(4.0) + 4 / 4)) / 2
    assert gaussian_nll(mean, log_var, y).item() == pytest.approx(expected)
    g = torch.Generator().manual_seed(3)
    m, lv, t = (torch.randn(16, 2, generator=g, dtype=torch.float64) for _ in range(3))
    ref = torch.nn.GaussianNLLLoss(full=False, reduction="mean")(m, t, lv.exp())
    assert gaussian_nll(m, lv, t).item() == pytest.approx(ref.item(), rel=1e-12)
