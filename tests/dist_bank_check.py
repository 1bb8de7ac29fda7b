"""Two-process check that an algorithm's state (BaCon's memory banks, ACR's running estimate) stays
identical on every rank.

Run by tests/test_bank.py and tests/test_acr.py as `accelerate launch --multi_gpu --num_processes 2 ...
tests/dist_bank_check.py` with ACCELERATE_USE_CPU=1; ALGORITHM (default bacon) names the algorithm.
Each rank feeds its own random outputs (with slots that collide across ranks); every write gathers all
ranks' entries first, so every buffer must match bit for bit.
"""

from __future__ import annotations

import os
from collections import namedtuple

import torch
from accelerate import Accelerator

from bacon_zoo.algorithms import create_algorithm, model_heads
from bacon_zoo.config import TrainConfig

K, N_L, N_U, B, MU, D, STEPS = 5, 12, 24, 4, 2, 16, 8


def main() -> None:
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, f"expected 2 processes, got {acc.num_processes}"
    name = os.environ.get("ALGORITHM", "bacon")
    cfg = TrainConfig()
    cfg.bacon.proj_dim = D
    cfg.acr.window, cfg.acr.est_start, cfg.acr.threshold = 2, 0, 0.5  # estimate from step 2
    algo = create_algorithm(
        name, cfg, K, [6, 3, 1, 1, 1], N_L, N_U, seed=0, rank=acc.process_index, gather=acc.gather
    )
    heads = model_heads(cfg, name)
    Out = namedtuple("Out", ["logits", *(h.output for h in heads)])
    views = len(algo.unlabeled_views)
    g = torch.Generator().manual_seed(1000 + acc.process_index)  # rank-dependent data
    u = MU * B
    losses = []
    for step in range(STEPS):
        n = B + views * u
        outs = [(torch.randn(n, K, generator=g) * 6).requires_grad_()]
        outs += [
            (torch.randn(n, h.dim or K, generator=g) * (1 if h.dim else 6)).requires_grad_()
            for h in heads
        ]
        batch = {
            "y_lb": torch.randint(0, K, (B,), generator=g),
            "idx_lb": torch.randint(
                0, N_L, (B,), generator=g
            ),  # duplicates within and across ranks
            "idx_ulb": torch.randint(0, N_U, (u,), generator=g),
            "y_ulb": torch.full((u,), -1),
        }
        out = Out(*outs)
        loss, logs = algo.loss(out, batch, step, STEPS)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(t.grad).all() for t in outs[:2])
        if "bacon" in algo.part_names and step > cfg.bacon.start * STEPS:
            assert out.proj.grad is not None and torch.isfinite(out.proj.grad).all()
        algo.after_step(step, STEPS)
        losses.append(loss.detach())

    # every buffer of the algorithm's state must be identical on both ranks
    for key, buf in algo.state_dict().items():
        both = acc.gather(buf.double()[None])
        assert torch.equal(both[0], both[1]), f"rank mismatch in {key}"
    if algo.bank is not None:
        centers, valid = algo.bank.centers()
        ref, ref_valid = algo.bank.recompute_centers()
        assert torch.equal(valid, ref_valid) and torch.allclose(centers, ref, atol=1e-5)
        assert int(algo.bank.written.sum()) > 0 and int((algo.bank.labels >= 0).sum()) > 0
    if "acr" in algo.part_names:  # the estimate moved away from uniform and tau was set
        assert not torch.allclose(algo.acr.estimate, torch.full((K,), 1.0 / K))
        assert float(algo.acr.tau) != cfg.acr.tau_max
    all_losses = acc.gather(torch.stack(losses)[None])
    assert not torch.equal(all_losses[0], all_losses[1]), "ranks saw identical data"
    checksum = sum(float(b.double().sum()) for b in algo.state_dict().values())
    if acc.is_main_process:
        print(f"DIST_BANK_OK world={acc.num_processes} {name} checksum={checksum:.6f}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
