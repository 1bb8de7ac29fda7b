"""No host-device synchronisation in a training step (issue 24): the trainer's own step parts
(`make_step_parts` + `train_step`), its data streams and diagnostics, on tiny digits data.

On the CPU `tests/syncs.SyncDetector` flags every call that would make a CUDA stream wait for the host;
on CUDA the same steps run under `torch.cuda.set_sync_debug_mode("error")`. Logging steps (one
`.item()` per logged value, once per `--log-every` window) are not part of the step checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from syncs import SyncDetector

ALGORITHMS = ("fixmatch", "abc", "bacon", "acr", "acr+bacon")
# BaCon's contrastive term from step 1: every anchor selected, every sample written to the banks;
# ACR's estimate and adaptive tau from step 1 (one-step windows, every pseudo-label confident)
SETS = ["bacon.start=0", "bacon.anchor_threshold=0", "bacon.bank_threshold=0", "acr.window=1",
        "acr.est_start=0", "acr.threshold=0"]  # fmt: skip


def build(algorithm: str, device: str = "cpu") -> dict:
    """What the trainer sets up for a run, on the bundled digits data (8 px, B=4, mu=2)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bacon_zoo.algorithms import create_algorithm
    from bacon_zoo.config import build_config
    from bacon_zoo.data import make_train_loaders, prepare_data
    from bacon_zoo.run import build_model
    from bacon_zoo.train.diagnostics import TrainingDiagnostics
    from bacon_zoo.train.trainer import make_step_parts

    flags = {
        "algorithm": algorithm, "dataset": "digits", "image_size": 8, "n1": 20, "m1": 40,
        "imb_ratio_l": 5, "imb_ratio_u": 5, "batch_size": 4, "mu": 2, "steps": 100,
        "cpu": device == "cpu", "mixed_precision": "no", "seed": 0,
    }  # fmt: skip
    cfg = build_config(None, flags, SETS)
    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=device == "cpu", mixed_precision="no")
    torch.manual_seed(0)
    data = prepare_data(cfg)
    algo = create_algorithm(
        algorithm, cfg=cfg, num_classes=data.num_classes, labeled_counts=data.labeled_counts,
        num_labeled=len(data.labeled.labels), num_unlabeled=len(data.unlabeled.labels), seed=0,
    )  # fmt: skip
    parts = make_step_parts(cfg, build_model(cfg, data.num_classes), algo, acc)
    algo.to(acc.device)
    diag = TrainingDiagnostics(
        data.num_classes, algo.eval_head, 0.95, data.labeled_counts, data.split.unlabeled_counts,
        len(data.labeled.labels), len(data.unlabeled.labels),
    )  # fmt: skip
    lb, ulb = make_train_loaders(
        data.labeled, data.unlabeled, cfg.batch_size, cfg.mu, data.mean, data.std, seed=0,
        device=acc.device, unlabeled_views=algo.unlabeled_views,
    )  # fmt: skip
    parts.model.train()
    return {"parts": parts, "diag": diag, "lb": lb, "ulb": ulb, "log_sums": {}}


def loop_step(run: dict, step: int) -> dict:
    """One non-logging iteration of the trainer's loop: both batches, the step, diagnostics, the
    on-device log sums."""
    from bacon_zoo.train.trainer import accumulate_logs, train_step

    logs, out, batch = train_step(run["parts"], next(run["lb"]), next(run["ulb"]), step)
    run["diag"].update(out, batch, logs)
    accumulate_logs(run["log_sums"], logs)
    return logs


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_host_sync_in_a_training_step(algorithm: str) -> None:
    run = build(algorithm)
    loop_step(run, 0)  # the first step moves state to the device and fills constant caches
    with SyncDetector() as det:
        for step in range(1, 4):
            logs = loop_step(run, step)
    assert not det.events, det.report()
    if "bacon" in algorithm:  # the contrastive term really ran in the checked steps
        assert float(logs["con_anchors"]) > 0 and float(logs["con_centers"]) > 0
    if "acr" in algorithm:  # ACR's estimate and adaptive tau ran in the checked steps
        assert float(logs["tau"]) < 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_host_sync_in_a_training_step_cuda(algorithm: str) -> None:
    run = build(algorithm, "cuda")
    loop_step(run, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            logs = loop_step(run, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if "bacon" in algorithm:
        assert float(logs["con_anchors"]) > 0


def test_detector_flags_each_kind_of_sync() -> None:
    """The detector can fail: every kind of call it exists for is flagged, and plain math is not."""
    t = torch.arange(6)
    cases = {
        "item": lambda: t.sum().item(),
        "bool": lambda: bool(t.any()),
        "tolist": lambda: t.tolist(),
        "cpu": lambda: t.cpu(),
        "numpy": lambda: t.numpy(),
        "mask index": lambda: t[t > 2],
        "nonzero": lambda: t.nonzero(),
        "bincount": lambda: torch.bincount(t),
        "unique": lambda: torch.unique(t),
        "host tensor": lambda: torch.tensor([1.0, 2.0]),
        "as_tensor of a float": lambda: torch.as_tensor(0.5),
        "new_tensor": lambda: t.new_tensor(3),
        "setitem number": lambda: t.clone().__setitem__(0, 5),
        "F.one_hot (CPU checks)": lambda: F.one_hot(t, 6),
        "repeat_interleave": lambda: torch.repeat_interleave(t, t),
        "equal": lambda: torch.equal(t, t),
    }
    for name, fn in cases.items():
        with SyncDetector() as det:
            fn()
        assert det.events, f"{name} was not flagged"
        assert "test_syncs.py" in det.events[0].where, det.report()
    with SyncDetector() as det:  # device-side math, fills, gathers, scalar arithmetic: no sync
        u = torch.where(t > 2, t * 2, 0).cumsum(0)
        u[1:].fill_(-1)
        torch.zeros(6, dtype=torch.long).index_add_(0, t % 3, u)
        torch.as_tensor(u, dtype=torch.float32).clamp(max=0.5).gather(0, t.flip(0))
        torch.from_numpy(np.arange(3))
    assert not det.events, det.report()


def test_log_sums_are_one_op_and_the_per_key_sums() -> None:
    """The loop's log sums: one foreach add a step (after the casts of logs that are not float32),
    the values of `sums.get(k, 0) + v.float()`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bacon_zoo.train.trainer import accumulate_logs

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    want: dict[str, torch.Tensor] = {}
    got: dict[str, torch.Tensor] = {}
    for step in range(4):
        logs = {"loss": torch.randn((), generator=g), "zero": torch.tensor(-0.0)}
        logs["n"] = torch.tensor(step)  # a long, cast as the per-key sum casts it
        logs["x64"] = torch.randn((), generator=g, dtype=torch.float64)
        if step >= 2:
            logs["late"] = torch.rand((), generator=g)  # a key that appears later starts at 0
        for k, v in logs.items():
            want[k] = want.get(k, 0) + v.detach().float()
        ops: list[str] = []
        with Ops():
            accumulate_logs(got, logs)
        casts = ["aten._to_copy.default"] * 2  # the long and the float64 log
        assert step in (0, 2) or ops == [*casts, "aten._foreach_add_.List"], ops
    assert list(got) == list(want)
    assert [repr(v.item()) for v in got.values()] == [repr(v.item()) for v in want.values()]
