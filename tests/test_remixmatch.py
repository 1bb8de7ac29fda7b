"""ReMixMatch's losses and schedules against plain loop-based references written from docs/method.md
("ReMixMatch, ReMixMatch + ABC, ReMixMatch + BaCon"), on fixed batches, to float32 precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bacon_zoo.algorithms.remixmatch import (
    da_update,
    distribution_align,
    frozen_bn_stats,
    mixup,
    mixup_lambda,
    remixmatch_loss,
    rotate_quarter_turns,
    sharpen,
    soft_cross_entropy,
    unsup_ramp,
)

K = 5


def _batch(seed: int, n: int = 6, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 3
    targets = torch.rand(n, k, generator=g)
    return logits, targets / targets.sum(1, keepdim=True)


# ---- plain references (lists and loops, math module)


def ref_soft_ce(logits: list[list[float]], targets: list[list[float]]) -> float:
    total = 0.0
    for z, t in zip(logits, targets):
        m = max(z)
        log_norm = m + math.log(sum(math.exp(v - m) for v in z))
        total += -sum(tk * (zk - log_norm) for zk, tk in zip(z, t))
    return total / len(logits)


def ref_align_sharpen(p, p_model, p_target, temperature):
    out = []
    for row in p:
        a = [row[k] * (p_target[k] + 1e-6) / (p_model[k] + 1e-6) for k in range(len(row))]
        s = sum(a)
        a = [v / s for v in a]
        sh = [v ** (1.0 / temperature) for v in a]
        s = sum(sh)
        out.append([v / s for v in sh])
    return out


def test_soft_cross_entropy_matches_loop():
    logits, targets = _batch(0)
    got = soft_cross_entropy(logits, targets)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_soft_ce(logits.tolist(), targets.tolist()), rel=1e-6)
    # one-hot targets: the ordinary cross-entropy
    y = torch.tensor([0, 3, 1, 4, 2, 2])
    onehot = torch.nn.functional.one_hot(y, K).float()
    assert soft_cross_entropy(logits, onehot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6
    )


def test_distribution_alignment_and_sharpening_match_loop():
    logits, _ = _batch(1)
    p = logits.softmax(1)
    p_model = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    p_target = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1])
    got = sharpen(distribution_align(p, p_model, p_target), 0.5)
    ref = ref_align_sharpen(p.tolist(), p_model.tolist(), p_target.tolist(), 0.5)
    torch.testing.assert_close(got, torch.tensor(ref), rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.sum(1), torch.ones(6))
    # aligning to p_model itself changes nothing
    torch.testing.assert_close(distribution_align(p, p_model, p_model), p, rtol=1e-6, atol=1e-7)


def test_da_running_mean_over_steps():
    """p_model: the first batch's mean, then 0.999 p_model + 0.001 mean_j p_j, each step."""
    p_model, initialized = torch.zeros(K), torch.tensor(False)
    ref = None
    for step in range(7):
        probs = _batch(10 + step, n=8)[0].softmax(1)
        p_model = da_update(p_model, initialized, probs, 0.999)
        initialized = torch.tensor(True)
        means = [sum(r[k] for r in probs.tolist()) / 8 for k in range(K)]
        ref = means if ref is None else [0.999 * a + 0.001 * b for a, b in zip(ref, means)]
        torch.testing.assert_close(p_model, torch.tensor(ref), rtol=1e-6, atol=1e-7)
    # with momentum 0 the running mean is the last batch's mean
    last = _batch(99, n=8)[0].softmax(1)
    torch.testing.assert_close(da_update(p_model, initialized, last, 0.0), last.mean(0))


def test_unsup_ramp_over_steps():
    total, warm = 640, 1.0 / 64  # ramps over 10 steps
    got = [unsup_ramp(t, total, warm) for t in range(14)]
    ref = [min(max(t / (warm * total), 0.0), 1.0) for t in range(14)]
    assert got == pytest.approx(ref, abs=1e-12)
    assert got[0] == 0.0 and got[5] == pytest.approx(0.5) and got[10:] == [1.0] * 4
    # the release's setting: 300k steps, ramp 1/64 -> full weight from step 4688
    assert unsup_ramp(4687, 300_000) < 1.0 == unsup_ramp(4688, 300_000)


def test_mixup_matches_loop_and_lambda_is_the_larger_side():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 3, 3, generator=g)
    y = torch.rand(5, K, generator=g)
    perm = torch.tensor([2, 0, 4, 1, 3])
    lam = 0.8
    mx, my = mixup(x, y, lam, perm)
    for i in range(5):
        j = int(perm[i])
        torch.testing.assert_close(mx[i], lam * x[i] + (1 - lam) * x[j])
        torch.testing.assert_close(my[i], lam * y[i] + (1 - lam) * y[j])
    rng = np.random.default_rng(0)
    lams = [mixup_lambda(0.75, rng) for _ in range(200)]
    assert all(0.5 <= v <= 1.0 for v in lams) and len(set(lams)) > 100
    assert mixup_lambda(0.0, rng) == 1.0
    # the same seed gives the same lambda (exact resume)
    assert mixup_lambda(0.75, np.random.default_rng(5)) == mixup_lambda(
        0.75, np.random.default_rng(5)
    )


def test_quarter_turns_match_pixel_loop_and_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 5, 5, generator=g)
    turns = torch.tensor([0, 1, 2, 3])
    got = rotate_quarter_turns(x, turns)
    n = 5
    for i, k in enumerate(turns.tolist()):
        for a in range(n):
            for b in range(n):
                # one counter-clockwise quarter turn: out[a][b] = in[b][n-1-a], applied k times
                src_a, src_b = a, b
                for _ in range(k):
                    src_a, src_b = src_b, n - 1 - src_a
                assert torch.equal(got[i, :, a, b], x[i, :, src_a, src_b])
        # the release turns the normalised tensor with torchvision's rotate(img, 90 * k)
        torch.testing.assert_close(got[i], tvf.rotate(x[i], 90 * k))
    with pytest.raises(ValueError, match="square"):
        rotate_quarter_turns(torch.zeros(1, 3, 4, 5), torch.tensor([1]))


def test_remixmatch_loss_matches_loop():
    b, u = 3, 2
    zl, _ = _batch(20, n=b)
    zu, _ = _batch(21, n=3 * u)
    _, mixed_t = _batch(22, n=b + 3 * u)
    zs0, q = _batch(23, n=u)
    zrot = _batch(24, n=u)[0][:, :4]
    r = torch.tensor([1, 3])
    ramp = 0.3
    loss, terms = remixmatch_loss(zl, zu, mixed_t, zs0, q, zrot, r, ramp, 1.5, 0.5, 0.5)
    lx = ref_soft_ce(zl.tolist(), mixed_t[:b].tolist())
    lu = ref_soft_ce(zu.tolist(), mixed_t[b:].tolist())
    lu1 = ref_soft_ce(zs0.tolist(), q.tolist())
    onehot = [[1.0 if c == int(rv) else 0.0 for c in range(4)] for rv in r]
    lrot = ref_soft_ce(zrot.tolist(), onehot)
    ref = lx + 0.5 * ramp * lu1 + 1.5 * ramp * lu + 0.5 * lrot
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    assert terms["loss_rot"].item() == pytest.approx(lrot, rel=1e-6)
    assert terms["loss_u1"].item() == pytest.approx(lu1, rel=1e-6)
    # no rotation head: the term is dropped
    loss0, terms0 = remixmatch_loss(zl, zu, mixed_t, zs0, q, None, None, ramp)
    assert "loss_rot" not in terms0
    assert loss0.item() == pytest.approx(lx + 0.5 * ramp * lu1 + 1.5 * ramp * lu, rel=1e-6)


def test_frozen_bn_uses_batch_statistics_and_keeps_running_ones():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(6, 3, 4, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_bn_stats(net):
        y_frozen = net(x)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    y = net(x)  # an ordinary training pass: same output, running statistics move
    torch.testing.assert_close(y_frozen, y)
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    assert int(net[1].num_batches_tracked) == 1 and net[1].track_running_stats
