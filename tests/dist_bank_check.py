"""Two-process check that BaCon's memory banks stay identical on every rank.

Run by tests/test_bank.py as `accelerate launch --multi_gpu --num_processes 2 ... tests/dist_bank_check.py`
with ACCELERATE_USE_CPU=1. Each rank feeds its own random outputs (with slots that collide across
ranks); every write gathers all ranks' entries first, so the banks must match bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate import Accelerator

from bacon_zoo.algorithms import BaCon
from bacon_zoo.config import TrainConfig

K, N_L, N_U, B, MU, D, STEPS = 5, 12, 24, 4, 2, 16, 8


class Out(NamedTuple):
    logits: torch.Tensor
    logits_abc: torch.Tensor
    proj: torch.Tensor


def main() -> None:
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, f"expected 2 processes, got {acc.num_processes}"
    cfg = TrainConfig()
    cfg.bacon.proj_dim = D
    algo = BaCon(
        cfg, K, [6, 3, 1, 1, 1], N_L, N_U, seed=0, rank=acc.process_index, gather=acc.gather
    )
    g = torch.Generator().manual_seed(1000 + acc.process_index)  # rank-dependent data
    u = MU * B
    losses = []
    for step in range(STEPS):
        n = B + 2 * u
        logits = (torch.randn(n, K, generator=g) * 6).requires_grad_()
        logits_abc = (torch.randn(n, K, generator=g) * 6).requires_grad_()
        proj = torch.randn(n, D, generator=g).requires_grad_()
        batch = {
            "y_lb": torch.randint(0, K, (B,), generator=g),
            "idx_lb": torch.randint(
                0, N_L, (B,), generator=g
            ),  # duplicates within and across ranks
            "idx_ulb": torch.randint(0, N_U, (u,), generator=g),
            "y_ulb": torch.full((u,), -1),
        }
        loss, logs = algo.loss(Out(logits, logits_abc, proj), batch, step, STEPS)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits_abc.grad).all()
        if step > cfg.bacon.start * STEPS:  # the contrastive term reaches the projections
            assert proj.grad is not None and torch.isfinite(proj.grad).all()
        algo.after_step(step, STEPS)
        losses.append(loss.detach())

    # every buffer of the algorithm's state must be identical on both ranks
    for name, buf in algo.state_dict().items():
        both = acc.gather(buf.double()[None])
        assert torch.equal(both[0], both[1]), f"rank mismatch in {name}"
    centers, valid = algo.bank.centers()
    ref, ref_valid = algo.bank.recompute_centers()
    assert torch.equal(valid, ref_valid) and torch.allclose(centers, ref, atol=1e-5)
    assert int(algo.bank.written.sum()) > 0 and int((algo.bank.labels >= 0).sum()) > 0
    all_losses = acc.gather(torch.stack(losses)[None])
    assert not torch.equal(all_losses[0], all_losses[1]), "ranks saw identical data"
    checksum = sum(float(b.double().sum()) for b in algo.state_dict().values())
    if acc.is_main_process:
        print(f"DIST_BANK_OK world={acc.num_processes} checksum={checksum:.6f}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
