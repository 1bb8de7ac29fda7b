"""ACR against plain loops written from docs/method.md ("ACR and ACR + BaCon"), its schedule over
several windows, and `acr` / `acr+bacon` end to end: train, resume exactly, two processes."""

from __future__ import annotations

import math
import signal
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import launch_two, tiny_sets

from bacon_zoo.algorithms import create_algorithm, describe, model_heads
from bacon_zoo.algorithms.acr import acr_losses, class_counts, logit_adjustment
from bacon_zoo.config import TrainConfig, build_config

ROOT = Path(__file__).resolve().parents[1]
K = 4


# ---------------------------------------------------------------------------------------------
# references: one sample at a time, in float64 Python


def _log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    s = math.log(sum(math.exp(v - m) for v in z)) + m
    return [v - s for v in z]


def _softmax(z: list[float]) -> list[float]:
    return [math.exp(v) for v in _log_softmax(z)]


def _ce(z: list[float], y: int) -> float:
    return -_log_softmax(z)[y]


def _adj(prior: list[float], tau: float) -> list[float]:
    return [math.log(p**tau + 1e-12) for p in prior]


def _argmax(p: list[float]) -> int:
    return max(range(len(p)), key=lambda k: (p[k], -k))


def reference_losses(h, hb, y, b, u, prior, tau1, tau12=2.0, tau2=2.0, thr=0.95):
    """L_x, L_u, L_x^b, L_u^b of docs/method.md; h, hb: rows [x | u^w | u^s | u^s'] as lists."""
    a1, a12, a2 = _adj(prior, tau1), _adj(prior, tau12), _adj(prior, tau2)
    loss_x = sum(_ce(h[i], y[i]) for i in range(b)) / b
    loss_xb = sum(_ce([v + a for v, a in zip(hb[i], a2)], y[i]) for i in range(b)) / b
    loss_u = loss_ub = 0.0
    for j in range(u):
        w, wb = h[b + j], hb[b + j]
        p1 = _softmax([v - a for v, a in zip(w, a1)])
        ph = _softmax(w)
        p2 = _softmax([v - a for v, a in zip(w, a12)])
        pb = _softmax(wb)
        m1 = max(p1) >= thr or max(ph) >= thr
        m2 = max(pb) >= thr or max(p2) >= thr
        for view in (1, 2):  # both strong views, each with its image's mask and target
            row = b + view * u + j
            loss_u += m1 * _ce(h[row], _argmax(p1))
            loss_ub += m2 * _ce(hb[row], _argmax(p2))
    return loss_x, loss_u / (2 * u), loss_xb, loss_ub / (2 * u)


def fixed_batch(seed: int, b: int = 5, u: int = 6, scale: float = 5.0):
    g = torch.Generator().manual_seed(seed)
    n = b + 3 * u
    h = torch.randn(n, K, generator=g) * scale
    hb = torch.randn(n, K, generator=g) * scale
    h[b : b + u : 2] *= 3  # some confident weak rows
    hb[b + 1 : b + u : 2] *= 3
    y = torch.randint(0, K, (b,), generator=g)
    return h, hb, y


@pytest.mark.parametrize("seed, tau1", [(0, 2.0), (1, 0.7), (2, 0.0)])
def test_acr_losses_match_the_loop_reference(seed, tau1):
    b, u = 5, 6
    h, hb, y = fixed_batch(seed, b, u)
    prior = torch.tensor([0.55, 0.25, 0.15, 0.05])
    sv = lambda t: (t[:b], t[b : b + u], torch.cat([t[b + u : b + 2 * u], t[b + 2 * u :]]))  # noqa: E731
    (lb, w, s), (blb, bw, bs) = sv(h), sv(hb)
    total, parts = acr_losses(
        lb, w, s, blb, bw, bs, y, logit_adjustment(prior, tau1), logit_adjustment(prior, 2.0),
        logit_adjustment(prior, 2.0), threshold=0.95,
    )  # fmt: skip
    ref = reference_losses(h.tolist(), hb.tolist(), y.tolist(), b, u, prior.tolist(), tau1)
    got = [parts[k] for k in ("loss_x", "loss_u", "loss_x_bal", "loss_u_bal")]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, torch.tensor(r, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        total, torch.tensor(sum(ref), dtype=torch.float32), rtol=1e-5, atol=1e-6
    )
    assert 0 < float(parts["mask"]) < 1 or 0 < float(parts["mask_bal"]) < 1  # masks do select


def test_counts_and_the_authors_one_write_per_class():
    labels = torch.tensor([2, 0, 2, 1, 2, 0])
    keep = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert class_counts(labels, keep, K).tolist() == [1.0, 0.0, 2.0, 0.0]
    # one write per class: the keep flag of the class's last sample (class 0: sample 5, not kept)
    assert class_counts(labels, keep, K, presence=True).tolist() == [0.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# the schedule: estimate, window sums and tau_1 over several windows, against a loop


def _sym_kl(p: list[float], q: list[float]) -> float:
    kl = lambda a, c: sum(x * (math.log(x) - math.log(z)) for x, z in zip(a, c) if x > 0)  # noqa: E731
    return 0.5 * kl(p, q) + 0.5 * kl(q, p)


Out = namedtuple("Out", ["logits", "logits_bal"])


def test_adaptive_schedule_over_several_windows():
    cfg = TrainConfig()
    cfg.acr.window, cfg.acr.est_start, cfg.acr.ema_u, cfg.acr.threshold = 3, 1, 0.6, 0.6
    counts = [8, 4, 2, 1]
    n_u = 12
    is_lb = torch.zeros(n_u, dtype=torch.bool)
    is_lb[[0, 5]] = True  # unlabeled images 0 and 5 are labeled ones: left out of the estimate
    algo = create_algorithm("acr", cfg, K, counts, 15, n_u, unlabeled_is_labeled=is_lb)
    prior = [c / sum(counts) for c in counts]
    anchors = (prior, [1 / K] * K, prior[::-1])
    est, sums, tau = [1 / K] * K, [0.0] * 3, 2.0
    b, u = 3, 6
    taus = []
    for step in range(15):
        g = torch.Generator().manual_seed(50 + step)
        h, hb = (
            torch.randn(b + 3 * u, K, generator=g) * 4,
            torch.randn(b + 3 * u, K, generator=g) * 4,
        )
        idx = torch.randint(0, n_u, (u,), generator=g)
        batch = {"y_lb": torch.randint(0, K, (b,), generator=g), "idx_lb": torch.arange(b),
                 "idx_ulb": idx, "y_ulb": torch.full((u,), -1)}  # fmt: skip
        algo.loss(Out(h, hb), batch, step, 15)
        # the loop: docs/method.md, "Adaptive consistency: the schedule"
        window = step // 3
        if step % 3 == 0:
            if window > 1:
                d = [x / 3 for x in sums]
                tau = 2.0 * math.exp(d[0]) / sum(math.exp(x) for x in d)
            sums = [0.0] * 3
        if window > 1:
            n = [0.0] * K
            for j in range(u):
                pb = _softmax(hb[b + j].tolist())
                if max(pb) >= 0.6 and not bool(is_lb[idx[j]]):
                    n[_argmax(pb)] += 1
            if sum(n) > 0:
                est = [0.6 * e + 0.4 * c / sum(n) for e, c in zip(est, n)]
                sums = [s + _sym_kl(est, a) for s, a in zip(sums, anchors)]
        torch.testing.assert_close(algo.acr.estimate, torch.tensor(est, dtype=torch.float32))
        assert abs(float(algo.acr.tau) - tau) < 1e-6, (
            step,
            float(algo.acr.tau),
            tau,
        )  # float32 pi_u
        taus.append(tau)
    assert taus[:9] == [2.0] * 6 + [2.0 / 3] * 3  # tau_max, then 1/3 of it at the first update
    assert len(set(taus[9:])) == 2 and all(0 < t < 2 for t in taus[9:])  # adapted twice


# ---------------------------------------------------------------------------------------------
# registry, network, card


def test_acr_names_heads_and_card():
    cfg = TrainConfig()
    assert [h.name for h in model_heads(cfg, "acr")] == ["bal"]
    assert [h.name for h in model_heads(cfg, "acr+bacon")] == ["bal", "proj"]
    algo = create_algorithm("acr+bacon", cfg, K, [4, 3, 2, 1], 10, 20)
    assert algo.eval_head == "bal" and len(algo.unlabeled_views) == 3
    info = describe("acr+bacon")
    assert info["base"] == "ACR" and info["imbalance"] == "ACR" and info["contrastive"] != "none"
    assert any("no paper reports" in n for n in info["notes"])
    assert describe("acr")["notes"] == []
    with pytest.raises(Exception, match="is not one of"):
        create_algorithm("acr+abc", cfg, K, [4, 3, 2, 1], 10, 20)  # one balanced head only


def test_acr_recipes_resolve():
    for name in ("acr_cifar10_lt_n1500_m3000_g100", "acr_cifar10_lt_n500_m4000_g100"):
        cfg = build_config(name)
        assert cfg.algorithm == "acr" and cfg.include_labeled_in_unlabeled
        assert (cfg.mu, cfg.steps, cfg.lr_schedule, cfg.eval_every) == (1, 250_000, "cosine", 500)


# ---------------------------------------------------------------------------------------------
# end to end on digits: train, resume exactly, two processes


# the shared tiny run; ACR's estimate and tau from step 2 and a low threshold, so pseudo-labels and
# banks engage at once
TINY = tiny_sets(
    "keep_checkpoints=3",
    "include_labeled_in_unlabeled=true",
    "acr.window=2",
    "acr.est_start=0",
    "acr.threshold=0.2",
)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    AcceleratorState._reset_state(True)


def _cfg(out: Path, *extra: str):
    return build_config(None, None, [*TINY, f"output_dir={out}", *extra])


@pytest.mark.parametrize("name", ["acr", "acr+bacon"])
def test_trains_and_resumes_exactly(tmp_path, monkeypatch, name):
    from test_train import _state

    from bacon_zoo.algorithms.base import Algorithm
    from bacon_zoo.train.trainer import train

    straight = train(_cfg(tmp_path / "straight", f"algorithm={name}"))
    assert straight.status == "complete" and straight.summary["eval_head"] == "bal"
    original = Algorithm.after_step

    def after_step(self, step, total_steps):
        original(self, step, total_steps)
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Algorithm, "after_step", after_step)
    stopped = train(_cfg(tmp_path / "stopped", f"algorithm={name}"))
    assert (stopped.status, stopped.step) == ("stopped", 4)
    monkeypatch.setattr(Algorithm, "after_step", original)
    AcceleratorState._reset_state(True)
    train(_cfg(tmp_path / "stopped", f"algorithm={name}", "resume=auto"))
    a = _state(tmp_path / "straight/checkpoints/step_0000006")
    b = _state(tmp_path / "stopped/checkpoints/step_0000006")
    assert a.keys() == b.keys() and "algo.acr.estimate" in a and "algo.acr.tau" in a
    assert not torch.equal(a["algo.acr.estimate"], torch.full((10,), 0.1))  # the estimate moved
    if name == "acr+bacon":
        assert "algo.bacon.bank.labels" in a and "model.proj.weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # two CPU processes under accelerate launch, per algorithm
@pytest.mark.parametrize("name", ["acr", "acr+bacon"])
def test_two_processes_keep_identical_state(name):
    t0 = time.time()
    proc = launch_two("tests/dist_bank_check.py", env={"ALGORITHM": name})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"exit {proc.returncode} after {time.time() - t0:.0f}s:\n{out[-4000:]}"
    )
    assert f"DIST_BANK_OK world=2 {name}" in out
