"""MemoryBank: incremental centers == full recompute == a sequential reference; BaCon's write rules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from conftest import launch_two

from bacon_zoo.algorithms import Algorithm, MemoryBank, create_algorithm
from bacon_zoo.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


class Out(NamedTuple):
    logits: torch.Tensor
    logits_abc: torch.Tensor
    proj: torch.Tensor


class ReferenceBank:
    """Writes applied one entry at a time, in order: the meaning of 'last write wins'."""

    def __init__(self, n: int, d: int, quirks: bool) -> None:
        self.labels = [-1] * n
        self.feats = [[1.0 if quirks else 0.0] * d for _ in range(n)]
        self.written = [False] * n

    def write(self, slots, mask, labels=None, feats=None) -> None:
        for e, slot in enumerate(slots.tolist()):
            if not mask[e]:
                continue
            if labels is not None:
                self.labels[slot] = int(labels[e])
            if feats is not None:
                self.feats[slot] = feats[e].tolist()
                self.written[slot] = True


@pytest.mark.parametrize("quirks", [False, True])
def test_incremental_centers_equal_recompute_and_reference(quirks):
    K, n_l, n_u, d = 7, 15, 25, 4
    bank = MemoryBank(K, n_l, n_u, d, quirks=quirks)
    ref = ReferenceBank(n_l + n_u, d, quirks)
    g = torch.Generator().manual_seed(0)
    for it in range(300):
        m = int(torch.randint(1, 30, (1,), generator=g))
        slots = torch.randint(0, 12 if it % 3 == 0 else n_l + n_u, (m,), generator=g)  # many dups
        mask = torch.rand(m, generator=g) < 0.6
        if it % 2 == 0:
            labels = torch.randint(0, K, (m,), generator=g)
            bank.update_labels(slots, labels, mask)
            ref.write(slots, mask, labels=labels)
        else:
            feats = torch.randn(m, d, generator=g)
            bank.update_features(slots, feats, mask)
            ref.write(slots, mask, feats=feats)
        if it % 25 == 0 or it == 299:
            assert bank.labels.tolist() == ref.labels
            assert bank.written.tolist() == ref.written
            assert torch.equal(bank.feats, torch.tensor(ref.feats))
            centers, valid = bank.centers()
            want, want_valid = bank.recompute_centers()
            assert torch.equal(valid, want_valid)
            torch.testing.assert_close(centers, want, rtol=1e-5, atol=1e-5)
            labels_t = torch.tensor(ref.labels)
            assert torch.equal(
                bank.class_counts(), torch.bincount(labels_t[labels_t >= 0], minlength=K)
            )
            # and the reference's own centers, by the definition in docs/method.md
            member = (labels_t >= 0) & (torch.tensor(ref.written) | quirks)
            for k in range(K):
                rows = torch.tensor(ref.feats)[member & (labels_t == k)]
                assert bool(valid[k]) == (len(rows) > 0)
                if len(rows):
                    torch.testing.assert_close(centers[k], rows.mean(0), rtol=1e-5, atol=1e-5)
    sums = bank.sums.clone()
    bank.resync()
    torch.testing.assert_close(bank.sums, sums, rtol=1e-5, atol=1e-5)
    assert quirks or bool(bank.counts.sum() <= bank.written.sum())


def test_duplicate_slots_last_masked_write_wins():
    bank = MemoryBank(3, 2, 2, 2)
    slots = torch.tensor([1, 1, 1, 3])
    bank.update_labels(slots, torch.tensor([0, 2, 1, 1]), torch.tensor([True, True, False, True]))
    assert bank.labels.tolist() == [-1, 2, -1, 1]  # the unmasked third write does not count
    bank.update_features(
        torch.tensor([1, 1]), torch.tensor([[1.0, 0.0], [0.0, 5.0]]), torch.tensor([True, True])
    )
    centers, valid = bank.centers()
    assert valid.tolist() == [False, False, True]  # slot 3 (class 1) has no feature yet
    assert centers[2].tolist() == [0.0, 5.0]


@pytest.mark.parametrize("quirks", [False, True])
def test_feature_write_with_the_label_writes_plan_is_the_same_write(quirks):
    """BaCon's step: a label write, then a feature write of the same slots (another mask) that reuses
    the label write's sort and reads: the bank ends bit for bit as with two independent writes."""
    K, n_l, n_u, d = 5, 10, 20, 3
    planned, plain = (MemoryBank(K, n_l, n_u, d, quirks=quirks) for _ in range(2))
    g = torch.Generator().manual_seed(1)
    for it in range(60):
        m = int(torch.randint(0, 25, (1,), generator=g))
        slots = torch.randint(0, 8 if it % 3 == 0 else n_l + n_u, (m,), generator=g)  # dups
        ok, selected = torch.rand(m, generator=g) < 0.6, torch.rand(m, generator=g) < 0.5
        labels, feats = torch.randint(0, K, (m,), generator=g), torch.randn(m, d, generator=g)
        plan = planned.update_labels(slots, labels, ok)
        planned.update_features(slots, feats, selected, plan)
        plain.update_labels(slots, labels, ok)
        plain.update_features(slots, feats, selected)
    for k, v in plain.state_dict().items():
        assert torch.equal(planned.state_dict()[k], v), k


def test_bank_state_moves_with_state_dict():
    a = MemoryBank(4, 3, 5, 2)
    a.update_labels(torch.tensor([0, 4]), torch.tensor([1, 3]), torch.tensor([True, True]))
    a.update_features(torch.tensor([0, 4]), torch.randn(2, 2), torch.tensor([True, True]))
    b = MemoryBank(4, 3, 5, 2)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"labels", "feats", "written", "sums", "counts", "label_counts"}
    for x, y in zip(a.centers(), b.centers()):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------------------------
# what BaCon writes: thresholds, slots, and the release's quirks


def _peaked(rows: list[tuple[int, float]], K: int, raw: bool = False) -> torch.Tensor:
    """Logits whose softmax puts probability p on class c (or, raw, logit p on c, p - 0.1 elsewhere:
    a high raw logit with a flat softmax)."""
    out = torch.zeros(len(rows), K)
    for i, (c, p) in enumerate(rows):
        if raw:
            out[i] = p - 0.1
            out[i, c] = p
        else:
            out[i, c] = torch.log(torch.tensor(p * (K - 1) / (1 - p)))
    return out


def _bacon(quirks: bool) -> Algorithm:
    cfg = TrainConfig()
    cfg.bacon.proj_dim = 4
    cfg.bacon.official_quirks = quirks
    return create_algorithm("bacon", cfg, 5, [4, 3, 2, 1, 1], num_labeled=6, num_unlabeled=8)


def _step(algo: Algorithm, abc_rows_lb, abc_rows_w, raw: bool = False, step: int = 0):
    K, B, U = 5, len(abc_rows_lb), len(abc_rows_w)
    abc = torch.cat([_peaked(abc_rows_lb, K, raw), _peaked(abc_rows_w, K, raw), torch.zeros(U, K)])
    proj = torch.arange((B + 2 * U) * 4, dtype=torch.float32).reshape(-1, 4)
    batch = {
        "y_lb": torch.tensor([c for c, _ in abc_rows_lb]),
        "idx_lb": torch.arange(B),
        "idx_ulb": torch.arange(U),
        "y_ulb": torch.full((U,), -1),
    }
    algo.loss(Out(torch.zeros(B + 2 * U, K), abc, proj), batch, step, 100)
    return proj


def test_bacon_writes_follow_thresholds():
    algo = _bacon(quirks=False)
    lb = [(0, 0.99), (1, 0.5)]  # labeled: label always written; feature only if max q >= 0.98
    w = [(2, 0.99), (3, 0.96), (4, 0.9)]  # unlabeled: label if >= 0.95, feature if >= 0.98
    proj = _step(algo, lb, w)
    assert algo.bank.labels.tolist() == [0, 1, -1, -1, -1, -1] + [2, 3, -1, -1, -1, -1, -1, -1]
    assert not algo.bank.written.any()  # features wait for after_step
    algo.after_step(0, 100)
    assert algo.bank.written.nonzero().flatten().tolist() == [0, 6]
    assert torch.equal(algo.bank.feats[0], proj[0]) and torch.equal(algo.bank.feats[6], proj[2])
    centers, valid = algo.bank.centers()
    assert valid.tolist() == [True, False, True, False, False]
    assert algo.bank.class_counts().tolist() == [1, 1, 1, 1, 0]


def test_bacon_quirks_raw_logits_and_labeled_gate():
    algo = _bacon(quirks=True)
    # quirk 1: the 0.95 test on raw logits -- a raw logit of 1.0 passes although softmax < 0.95
    # quirk 3: no unlabeled sample passes -> labeled slots are not written either
    _step(algo, [(0, 10.0)], [(2, 0.5), (3, 0.9)], raw=True)
    assert (algo.bank.labels == -1).all()
    _step(algo, [(0, 10.0)], [(2, 1.0), (3, 0.9)], raw=True, step=1)
    assert algo.bank.labels[0] == 0 and algo.bank.labels[6] == 2 and algo.bank.labels[7] == -1
    # quirk 2: label set, feature never written -> an all-ones vector counts toward the center
    centers, valid = algo.bank.centers()
    assert valid[2] and torch.equal(centers[2], torch.ones(4))
    plain = _bacon(quirks=False)
    _step(plain, [(0, 0.5)], [(2, 0.5), (3, 0.6)])
    assert plain.bank.labels[0] == 0  # no gate without quirks
    assert not plain.bank.centers()[1].any()


# ---------------------------------------------------------------------------------------------
# two processes under accelerate


@pytest.mark.slow  # two CPU processes under accelerate launch
def test_banks_identical_across_two_processes():
    """~20 s on 2 shared CPU cores (two interpreter start-ups + gloo); the only distributed check."""
    t0 = time.time()
    proc = launch_two("tests/dist_bank_check.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"exit {proc.returncode} after {time.time() - t0:.0f}s:\n{out[-4000:]}"
    )
    assert "DIST_BANK_OK world=2" in out
