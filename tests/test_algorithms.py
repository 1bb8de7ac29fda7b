"""The algorithms' math against docs/method.md, written naively here."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from bacon_zoo.algorithms import (
    ABC,
    Algorithm,
    BaCon,
    FixMatch,
    abc_labeled_mask,
    abc_ratios,
    abc_unlabeled_mask,
    algorithm_names,
    bacon_contrastive_loss,
    bta_temperatures,
    canonical,
    create_algorithm,
    fixmatch_unlabeled_loss,
    reliable_negatives,
)
from bacon_zoo.config import TrainConfig
from bacon_zoo.errors import UserError


class Out(NamedTuple):
    logits: torch.Tensor
    logits_abc: torch.Tensor
    proj: torch.Tensor


# ---------------------------------------------------------------------------------------------
# the contrastive loss vs a per-class / per-anchor loop written from the formulas of docs/method.md


def naive_bacon_loss(feats, labels, is_lab, topk, sel, centers, tau, tau0, neg_scale, valid):
    n, K = feats.shape[0], centers.shape[0]
    z = feats / feats.norm(dim=1, keepdim=True)
    c = centers.detach() / centers.detach().norm(dim=1, keepdim=True)
    labels, topk = labels.tolist(), topk.tolist()

    def is_negative(j: int, k: int) -> bool:  # E_k, Reliable Negative Selection
        return labels[j] != k if is_lab[j] else k not in topk[j]

    nu, has_neg = {}, {}
    for k in range(K):
        terms = [
            torch.exp(torch.dot(z[i], z[j]) / tau0)
            for i in range(n)
            if labels[i] == k
            for j in range(n)
            if j != i and is_negative(j, k)
        ]
        has_neg[k] = len(terms) > 0
        nu[k] = torch.stack(terms).mean() if terms else None
    num, den = feats.new_zeros(()), 0.0
    for i in range(n):
        k = labels[i]
        if not sel[i] or not bool(valid[k]) or not has_neg[k]:
            continue
        pi = torch.exp(torch.dot(z[i], c[k]) / tau[k])
        num = num - torch.log(pi / (pi + neg_scale * nu[k] + 1e-8))
        den += 1.0
    return num / (den + 1e-8)


def random_problem(K: int, B: int, U: int, seed: int, dtype=torch.float64):
    """Random anchors as BaCon builds them: unlabeled labels = argmax q, topk = top-3 of q."""
    g = torch.Generator().manual_seed(seed)
    n, d = B + U, 8
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    q = torch.randn(U, K, generator=g, dtype=dtype).softmax(1)
    y_lb = torch.randint(0, K, (B,), generator=g)
    labels = torch.cat([y_lb, q.argmax(1)])
    topk = torch.cat([torch.zeros(B, 3, dtype=torch.long), q.topk(3, dim=1).indices])
    is_lab = torch.arange(n) < B
    sel = torch.rand(n, generator=g) < 0.7
    centers = torch.randn(K, d, generator=g, dtype=dtype)
    valid = torch.rand(K, generator=g) < 0.8  # some classes have no bank members
    centers[~valid] = float("nan")  # an invalid center must never leak in
    counts = torch.randint(0, 50, (K,), generator=g)
    tau = bta_temperatures(counts, 0.3).to(dtype)
    return feats, labels, is_lab, topk, sel, centers, tau, valid


def _loss_and_grad(fn, feats, *rest):
    f = feats.clone().requires_grad_()
    loss = fn(f, *rest)
    loss.backward()
    return loss.detach(), f.grad


@pytest.mark.parametrize("K,B,U,seed", [(10, 12, 24, 0), (10, 4, 8, 1), (100, 16, 32, 2)])
def test_contrastive_loss_matches_naive_loop(K, B, U, seed):
    feats, labels, is_lab, topk, sel, centers, tau, valid = random_problem(K, B, U, seed)
    args = (labels, is_lab, topk, sel, centers, tau)

    def fast(f, labels, is_lab, topk, sel, centers, tau):
        return bacon_contrastive_loss(f, labels, is_lab, topk, sel, centers, tau, 0.1, 64.0, valid)

    def slow(f, labels, is_lab, topk, sel, centers, tau):
        return naive_bacon_loss(f, labels, is_lab, topk, sel, centers, tau, 0.1, 64.0, valid)

    lf, gf = _loss_and_grad(fast, feats, *args)
    ls, gs = _loss_and_grad(slow, feats, *args)
    assert torch.isfinite(lf) and torch.isfinite(gf).all()
    torch.testing.assert_close(lf, ls, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gf, gs, rtol=1e-9, atol=1e-12)


def test_empty_negative_set_drops_out():
    """Class 3: every labeled sample is class 3 and every unlabeled top-3 holds 3 -> E_3 is empty."""
    K, B, U = 10, 6, 10
    feats, _, is_lab, _, sel, centers, tau, _ = random_problem(K, B, U, 3)
    g = torch.Generator().manual_seed(5)
    q = torch.rand(U, K, generator=g, dtype=torch.float64)
    q[:, 3] += 2.0  # 3 is everyone's argmax, hence in every top-3
    labels = torch.cat([torch.full((B,), 3), q.argmax(1)])
    topk = torch.cat([torch.zeros(B, 3, dtype=torch.long), q.topk(3, dim=1).indices])
    sel = torch.ones_like(sel)
    valid = torch.ones(K, dtype=torch.bool)
    centers = torch.nan_to_num(centers, nan=1.0)
    assert not reliable_negatives(labels, is_lab, topk, K)[3].any()
    lf, gf = _loss_and_grad(
        lambda f: bacon_contrastive_loss(
            f, labels, is_lab, topk, sel, centers, tau, center_valid=valid
        ),
        feats,
    )
    assert lf == 0 and torch.isfinite(gf).all() and (gf == 0).all()  # every anchor is class 3
    # now a second class with negatives: its anchors count, the class-3 anchors still drop out
    labels[0] = 7
    lf, gf = _loss_and_grad(
        lambda f: bacon_contrastive_loss(
            f, labels, is_lab, topk, sel, centers, tau, center_valid=valid
        ),
        feats,
    )
    ls, gs = _loss_and_grad(
        lambda f: naive_bacon_loss(f, labels, is_lab, topk, sel, centers, tau, 0.1, 64.0, valid),
        feats,
    )
    assert lf > 0 and torch.isfinite(gf).all()
    torch.testing.assert_close(lf, ls)
    torch.testing.assert_close(gf, gs)


def test_no_valid_center_gives_zero_not_nan():
    feats, labels, is_lab, topk, sel, centers, tau, _ = random_problem(10, 8, 8, 4)
    valid = torch.zeros(10, dtype=torch.bool)
    lf, gf = _loss_and_grad(
        lambda f: bacon_contrastive_loss(
            f, labels, is_lab, topk, sel, centers, tau, center_valid=valid
        ),
        feats,
    )
    assert lf == 0 and torch.isfinite(gf).all()


def test_centers_get_no_gradient_negatives_do():
    # anchor 0 (labeled, class 0, selected); sample 1 (labeled, class 1, not selected) is only a
    # negative of class 0; sample 2 (class 2) is not selected and nobody of class 2 is selected.
    feats = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    centers = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels, is_lab = torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool)
    sel = torch.tensor([True, False, False])
    loss = bacon_contrastive_loss(
        feats,
        labels,
        is_lab,
        torch.zeros(3, 1, dtype=torch.long),
        sel,
        centers,
        torch.full((3,), 0.1),
    )
    loss.backward()
    assert centers.grad is None
    assert feats.grad[0].abs().sum() > 0 and feats.grad[1].abs().sum() > 0  # anchor and negative
    assert feats.grad[2].abs().sum() > 0  # also a negative of class 0


def test_self_pairs_never_enter_nu():
    """Even with a topk that omits an unlabeled sample's own label, it is no negative of its class."""
    labels = torch.tensor([0, 0, 1])
    is_lab = torch.tensor([False, False, True])
    topk = torch.tensor([[2], [2], [0]])  # own label 0 missing from the top-k of rows 0 and 1
    neg = reliable_negatives(labels, is_lab, topk, 3)
    assert not neg[0, 0] and not neg[0, 1] and neg[0, 2]
    assert neg[1, 0] and neg[1, 1] and not neg[1, 2]


def test_bf16_autocast_computes_in_float32():
    feats, labels, is_lab, topk, sel, centers, tau, valid = random_problem(10, 8, 16, 6)
    feats, centers, tau = feats.float(), torch.nan_to_num(centers.float()), tau.float()
    ref = bacon_contrastive_loss(feats, labels, is_lab, topk, sel, centers, tau, center_valid=valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = bacon_contrastive_loss(
            feats.bfloat16(), labels, is_lab, topk, sel, centers, tau, center_valid=valid
        )
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, ref, rtol=2e-2, atol=1e-2)


def test_tiny_tau0_stays_finite():
    feats, labels, is_lab, topk, sel, centers, _, valid = random_problem(
        10, 8, 16, 7, torch.float32
    )
    tau = torch.full((10,), 0.005)
    lf, gf = _loss_and_grad(
        lambda f: bacon_contrastive_loss(
            f, labels, is_lab, topk, sel, centers, tau, tau0=0.005, center_valid=valid
        ),
        feats,
    )
    assert torch.isfinite(lf) and torch.isfinite(gf).all()


# ---------------------------------------------------------------------------------------------
# BTA and RNS


def test_bta_temperatures_formula():
    counts = torch.tensor([400, 100, 25, 0])
    for p in (0.0, 0.25, 1.0):
        want = [0.1 * (1 - 0.005 * (1 - p) ** 2 * math.sqrt(c / 400)) for c in (400, 100, 25, 0)]
        torch.testing.assert_close(bta_temperatures(counts, p), torch.tensor(want))
    torch.testing.assert_close(bta_temperatures(counts, 1.0), torch.full((4,), 0.1))
    torch.testing.assert_close(bta_temperatures(torch.zeros(4), 0.0), torch.full((4,), 0.1))
    torch.testing.assert_close(
        bta_temperatures(counts, 0.0, tau0=0.2, eta=0.5)[0], torch.tensor(0.2 * 0.5)
    )


def make_algo(name: str = "bacon", K: int = 10, rank: int = 0, **bacon_overrides) -> Algorithm:
    cfg = TrainConfig()
    for key, value in bacon_overrides.items():
        setattr(cfg.bacon, key, value)
    counts = [max(1, int(100 * 0.6**k)) for k in range(K)]
    return create_algorithm(
        name,
        cfg=cfg,
        num_classes=K,
        labeled_counts=counts,
        num_labeled=40,
        num_unlabeled=80,
        seed=0,
        rank=rank,
    )


def make_batch(seed: int, K: int = 10, B: int = 8, mu: int = 2, d: int = 16, scale: float = 6.0):
    g = torch.Generator().manual_seed(seed)
    U, n = mu * B, B + 2 * mu * B
    out = Out(
        (torch.randn(n, K, generator=g) * scale).requires_grad_(),
        (torch.randn(n, K, generator=g) * scale).requires_grad_(),
        torch.randn(n, d, generator=g).requires_grad_(),
    )
    batch = {
        "y_lb": torch.randint(0, K, (B,), generator=g),
        "idx_lb": torch.randint(0, 40, (B,), generator=g),
        "idx_ulb": torch.randint(0, 80, (U,), generator=g),
        "y_ulb": torch.randint(-1, K, (U,), generator=g),
    }
    return out, batch


def test_bta_switch():
    on, off = make_algo(bta=True), make_algo(bta=False)
    for algo in (on, off):
        out, batch = make_batch(0)
        algo.loss(out, batch, 0, 100)
    tau_on, tau_off = (
        on.bacon.temperatures(10, 100, torch.device("cpu")),
        off.bacon.temperatures(10, 100, "cpu"),
    )
    torch.testing.assert_close(tau_off, torch.full((10,), 0.1))
    want = bta_temperatures(on.bank.class_counts(), 0.1, 0.1, 0.005)
    torch.testing.assert_close(tau_on, want)
    assert (tau_on < 0.1).any()
    # bta_horizon: progress = step / (horizon * T), clipped to 1
    half = make_algo(bta_horizon=0.5)
    half.bank.load_state_dict(on.bank.state_dict())
    torch.testing.assert_close(half.bacon.temperatures(50, 100, "cpu"), torch.full((10,), 0.1))


def test_rns_switch_changes_only_the_negatives():
    """RNS off = the pseudo-label as a top-1: unlabeled j is a negative of every class but its own."""
    labels = torch.tensor([0, 1, 2, 1])
    is_lab = torch.tensor([True, True, False, False])
    top3 = torch.tensor([[0, 0, 0], [0, 0, 0], [2, 0, 3], [1, 2, 3]])
    rns = reliable_negatives(labels, is_lab, top3, 4)
    plain = reliable_negatives(labels, is_lab, labels[:, None], 4)
    assert torch.equal(plain, labels[None, :] != torch.arange(4)[:, None])
    assert torch.equal(rns[:, :2], plain[:, :2])  # labeled columns unchanged
    assert torch.equal(rns[:, 2], torch.tensor([False, True, False, False]))
    assert torch.equal(rns[:, 3], torch.tensor([True, False, False, False]))
    # in the algorithm: same inputs and bank, different contrastive losses
    results = {}
    for flag in (True, False):
        algo = make_algo(rns=flag, start=0.0, anchor_threshold=0.0)
        for step in range(3):
            out, batch = make_batch(step)
            _, logs = algo.loss(out, batch, step + 1, 10)
            algo.after_step(step + 1, 10)
        results[flag] = logs["loss_con"]
    assert results[True] != results[False]


# ---------------------------------------------------------------------------------------------
# ABC's Bernoulli masks


def test_abc_ratios():
    torch.testing.assert_close(
        abc_ratios([1000, 500, 100, 10]), torch.tensor([0.01, 0.02, 0.1, 1.0])
    )
    torch.testing.assert_close(abc_ratios([10, 0, 5]), torch.tensor([0.5, 1.0, 1.0]))


def test_abc_labeled_mask_follows_ratios():
    r = abc_ratios([1000, 500, 100, 10])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    m = abc_labeled_mask(y, r, g)
    for k in range(4):
        rate, p, nk = m[y == k].mean().item(), r[k].item(), int((y == k).sum())
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / nk) + 1e-9, (k, rate, p)


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_abc_unlabeled_mask_anneals(progress):
    r = abc_ratios([1000, 500, 100, 10])
    n = 200_000
    g = torch.Generator().manual_seed(1)
    yhat = torch.randint(0, 4, (n,), generator=g)
    confident = torch.rand(n, generator=g) < 0.5
    probs = torch.full((n, 4), 0.01)
    probs[torch.arange(n), yhat] = torch.where(confident, 0.97, 0.5)
    m, got = abc_unlabeled_mask(probs, r, progress, 0.95, g)
    assert torch.equal(got, yhat)
    assert m[~confident].sum() == 0  # below threshold: never kept
    for k in range(4):
        sel = confident & (yhat == k)
        p = 1 - progress * (1 - r[k].item())
        rate = m[sel].mean().item()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / int(sel.sum())) + 1e-9, (k, rate, p)


def test_fixmatch_unlabeled_loss():
    logits_w = torch.tensor([[10.0, 0.0], [0.1, 0.0], [0.0, 10.0]])
    logits_s = torch.randn(3, 2, requires_grad=True)
    loss, mask = fixmatch_unlabeled_loss(logits_s, logits_w.requires_grad_(), 0.95)
    assert torch.equal(mask, torch.tensor([1.0, 0.0, 1.0]))
    ce = torch.nn.functional.cross_entropy(logits_s, torch.tensor([0, 0, 1]), reduction="none")
    torch.testing.assert_close(loss, (ce * mask).mean())
    loss.backward()
    assert logits_w.grad is None  # no gradient through p(u^w)


# ---------------------------------------------------------------------------------------------
# the algorithm classes


def test_registry_and_unknown_name():
    names = algorithm_names()
    assert {"fixmatch", "fixmatch+abc", "fixmatch+abc+bacon", "abc", "bacon"} <= set(names)
    assert "fixmatch+bacon" not in names  # BaCon's anchors need a balanced head
    assert canonical("bacon") == "fixmatch+abc+bacon" and canonical("abc") == "fixmatch+abc"
    assert {n: make_algo(n).eval_head for n in ("fixmatch", "abc", "bacon")} == {
        "fixmatch": "main",
        "abc": "abc",
        "bacon": "abc",
    }
    with pytest.raises(UserError, match=r"not one of fixmatch, .*\(did you mean bacon\?\)"):
        create_algorithm("bacn")
    for bad in ("fixmatch+bacon", "fixmatch+bacon+abc", "abc+fixmatch", "fixmatch+fixmatch"):
        with pytest.raises(UserError, match="is not one of"):
            create_algorithm(bad)


@pytest.mark.parametrize("name", ["fixmatch", "abc", "bacon"])
def test_loss_runs_and_backprops(name):
    algo = make_algo(name)
    T = 10
    for step in range(T):
        out, batch = make_batch(step)
        loss, logs = algo.loss(out, batch, step, T)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert all(v.ndim == 0 and not v.requires_grad for v in logs.values())
        assert torch.isfinite(out.logits.grad).all()
        if name != "fixmatch":
            assert torch.isfinite(out.logits_abc.grad).all()
        if name == "bacon" and step > algo.bacon.cfg.start * T and logs["anchors_used"] > 0:
            assert out.proj.grad is not None and torch.isfinite(out.proj.grad).all()
        algo.after_step(step, T)
    expected = {"loss", "loss_x", "loss_u", "mask", "pl_acc"}
    if name != "fixmatch":
        expected |= {"loss_abc", "mask_abc"}
    if name == "bacon":
        expected |= {"loss_con", "anchors", "anchors_used"}
    assert expected <= set(logs)


def test_bacon_wiring_matches_pure_function():
    """Step t: centers as left by step t-1, tau from the label bank after this step's writes."""
    algo = make_algo(start=0.0)
    T = 10
    for step in range(4):
        out, batch = make_batch(step)
        centers, valid = algo.bank.centers()
        _, logs = algo.loss(out, batch, step + 1, T)
        b, u = 8, 16
        q_w = out.logits_abc[b : b + u].detach().softmax(1)
        q_lb = out.logits_abc[:b].detach().softmax(1)
        sel = torch.cat([q_lb.max(1).values, q_w.max(1).values]) >= 0.98
        want = bacon_contrastive_loss(
            out.proj[: b + u].detach(),
            torch.cat([batch["y_lb"], q_w.argmax(1)]),
            torch.arange(b + u) < b,
            torch.cat([torch.zeros(b, 3, dtype=torch.long), q_w.topk(3, dim=1).indices]),
            sel,
            centers,
            algo.bacon.temperatures(step + 1, T, "cpu"),
            center_valid=valid,
        )
        torch.testing.assert_close(logs["loss_con"], want)
        algo.after_step(step + 1, T)


def test_contrastive_term_starts_after_start_fraction():
    algo = make_algo(start=0.5, anchor_threshold=0.0)
    T = 10
    for step in range(T):
        out, batch = make_batch(step)
        loss, logs = algo.loss(out, batch, step, T)
        loss.backward()
        algo.after_step(step, T)
        if step <= 5:
            assert logs["loss_con"] == 0 and out.proj.grad is None
        else:
            assert logs["loss_con"] > 0
    assert (algo.bank.labels >= 0).any() and algo.bank.written.any()  # banks filled from step 0


@pytest.mark.parametrize("quirks", [False, True])
def test_state_dict_round_trip_gives_identical_losses(quirks):
    T = 12
    a = make_algo(start=0.25, official_quirks=quirks)
    for step in range(6):
        out, batch = make_batch(step)
        a.loss(out, batch, step, T)
        a.after_step(step, T)
    b = make_algo(start=0.25, official_quirks=quirks)
    b.load_state_dict(a.state_dict())
    for step in range(6, T):
        out, batch = make_batch(step)
        la, logs_a = a.loss(out, batch, step, T)
        lb, logs_b = b.loss(out, batch, step, T)
        assert torch.equal(la, lb)
        assert all(torch.equal(logs_a[k], logs_b[k]) for k in logs_a)
        a.after_step(step, T)
        b.after_step(step, T)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_deterministic_resume_bernoulli_masks():
    """The masks depend only on (seed, rank, step): a fresh object at step 7 draws the same ones."""
    a, b = make_algo("abc"), make_algo("abc")
    out, batch = make_batch(0)
    a.loss(out, batch, 3, 10)  # a has taken other steps before
    la, logs_a = a.loss(out, batch, 7, 10)
    lb, logs_b = b.loss(out, batch, 7, 10)
    assert torch.equal(la, lb) and torch.equal(logs_a["mask_abc_lb"], logs_b["mask_abc_lb"])
    g1, g2 = a.abc.generator(7, torch.device("cpu")), b.abc.generator(7, torch.device("cpu"))
    assert torch.equal(torch.rand(64, generator=g1), torch.rand(64, generator=g2))
    d7 = torch.rand(8, generator=make_algo("abc").abc.generator(7, "cpu"))
    d8 = torch.rand(8, generator=make_algo("abc").abc.generator(8, "cpu"))
    other_rank = make_algo("abc", rank=1)
    assert not torch.equal(d7, d8)
    assert not torch.equal(d7, torch.rand(8, generator=other_rank.abc.generator(7, "cpu")))


def test_bacon_is_abc_plus_contrastive():
    """Before the contrastive start BaCon's loss equals ABC's on the same inputs."""
    abc, bacon = make_algo("abc"), make_algo("bacon")
    assert [type(p) for p in bacon.parts] == [FixMatch, ABC, BaCon]
    out, batch = make_batch(3)
    la, _ = abc.loss(out, batch, 2, 10)
    lb, _ = bacon.loss(out, batch, 2, 10)
    assert torch.equal(la, lb)


def test_the_plugins_batch_negatives_are_the_general_ones():
    """BaCon's step builds its masks with `batch_negatives` (labeled rows first, in fewer ops); they,
    and the losses from them, equal the general `reliable_negatives` / `bacon_contrastive_terms`."""
    from bacon_zoo.algorithms.bacon import (
        bacon_contrastive_terms,
        batch_negatives,
        contrastive_terms,
    )

    for seed in range(5):
        feats, labels, is_lab, topk, _, centers, tau, valid = random_problem(6, 4, 12, seed)
        b = int(is_lab.sum())
        onehot, neg = batch_negatives(labels, b, topk[b:], 6, feats.dtype)
        assert torch.equal(neg, reliable_negatives(labels, is_lab, topk, 6).to(feats.dtype))
        assert torch.equal(onehot, F.one_hot(labels, 6).to(feats.dtype))
        got = contrastive_terms(feats, labels, onehot, neg, centers, tau, center_valid=valid)
        want = bacon_contrastive_terms(
            feats, labels, is_lab, topk, centers, tau, center_valid=valid
        )
        assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_short_normalize_backward_is_torchs(dtype):
    """`_normalize` (BaCon's F.normalize with a 9-op backward): the same values and gradients, bit for
    bit, a zero row included."""
    from bacon_zoo.algorithms.bacon import _normalize

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g, dtype=dtype)
    x[3] = 0.0
    up = torch.randn(64, 16, generator=g, dtype=dtype)
    outs = []
    for fn in (_normalize, lambda t: F.normalize(t, dim=1)):
        t = x.clone().requires_grad_()
        y = fn(t)
        y.backward(up)
        outs.append((y.detach(), t.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
