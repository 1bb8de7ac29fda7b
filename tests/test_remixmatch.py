"""ReMixMatch's losses and schedules against plain loop-based references written from docs/method.md
("ReMixMatch, ReMixMatch + ABC, ReMixMatch + BaCon"), on fixed batches, to float32 precision."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import bacon_zoo.algorithms.remixmatch  # noqa: F401  (registers the plug-in)
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


# ---- the plug-in's passes, against a step rebuilt by hand from docs/method.md


def _tiny_setup(name: str, seed: int = 0):
    import bacon_zoo.algorithms as algos
    from bacon_zoo.config import build_config
    from bacon_zoo.models.bacon_net import BaconNet

    cfg = build_config(None, None, [f"algorithm={name}", "bacon.start=0", "abc.threshold=0"])
    torch.manual_seed(seed)
    net = BaconNet("wrn28_2", K, heads=algos.model_heads(cfg)).train()
    counts = [9, 5, 3, 2, 1]
    algo = algos.create_algorithm(name, cfg, K, counts, num_labeled=20, num_unlabeled=30, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    b = 3
    lb = {"x": torch.randn(b, 3, 8, 8, generator=g), "y": torch.tensor([0, 2, 4])}
    lb["idx"] = torch.arange(b)
    ulb = {k: torch.randn(b, 3, 8, 8, generator=g) for k in ("x_w", "x_s", "x_s1")}
    ulb |= {"idx": torch.arange(b), "y": torch.full((b,), -1)}
    return cfg, net, algo, algo.make_batch(lb, ulb), counts


def test_remixmatch_step_matches_a_hand_built_step(one_torch_thread):
    """Same draws, same weights: separate train-mode forwards per group (BN running statistics
    restored after every group but the first MixUp chunk), DA/sharpen/MixUp/rotation by hand."""
    import copy

    cfg, net, algo, batch, counts = _tiny_setup("remixmatch+abc")
    ref_net = copy.deepcopy(net)
    step, total = 7, 640  # ramp 7 / 10
    base = algo.base
    p_model0 = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1])
    base.p_model.copy_(p_model0)
    base.da_ready.fill_(True)
    loss, logs, out = algo.forward_loss(net, batch, step, total)

    bns = [m for m in ref_net.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def frozen(x):
        saved = [
            (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in bns
        ]
        o = ref_net(x)
        for m, (a, v, n) in zip(bns, saved):
            m.running_mean.copy_(a), m.running_var.copy_(v), m.num_batches_tracked.copy_(n)
        return o

    x_lb, x_w, x_s0, x_s1 = batch["x_lb"], batch["x_w"], batch["x_s"], batch["x_s1"]
    b = u = 3
    with torch.no_grad():
        p = frozen(x_w).logits.softmax(1)
    means = p.mean(0).tolist()
    p_model = [0.999 * a + 0.001 * m for a, m in zip(p_model0.tolist(), means)]
    p_target = [c / sum(counts) for c in counts]
    q = torch.tensor(ref_align_sharpen(p.tolist(), p_model, p_target, 0.5))
    torch.testing.assert_close(base.p_model, torch.tensor(p_model), rtol=1e-6, atol=1e-7)
    o_lb, o_s0 = frozen(x_lb), frozen(x_s0)
    g, rng = base._draws(step, torch.device("cpu"))
    perm = torch.randperm(b + 3 * u, generator=g)
    lam = mixup_lambda(0.75, rng)
    xs = torch.cat([x_lb, x_s0, x_s1, x_w])
    ys = torch.cat([torch.nn.functional.one_hot(batch["y_lb"], K).float(), q, q, q])
    mixed_x = torch.stack([lam * xs[i] + (1 - lam) * xs[int(perm[i])] for i in range(len(xs))])
    mixed_y = torch.stack([lam * ys[i] + (1 - lam) * ys[int(perm[i])] for i in range(len(ys))])
    logits = [ref_net(mixed_x[:b]).logits] + [frozen(mixed_x[i : i + b]).logits for i in (3, 6, 9)]
    turns = torch.randint(0, 4, (u,), generator=g)
    rot = frozen(torch.stack([torch.rot90(x_s0[j], int(turns[j]), (-2, -1)) for j in range(u)]))
    ramp = 7 / 10
    ref = (
        ref_soft_ce(logits[0].tolist(), mixed_y[:b].tolist())
        + 0.5 * ramp * ref_soft_ce(o_s0.logits.tolist(), q.tolist())
        + 1.5 * ramp * ref_soft_ce(torch.cat(logits[1:]).tolist(), mixed_y[b:].tolist())
        + 0.5 * ref_soft_ce(rot.logits_rot.tolist(), torch.nn.functional.one_hot(turns, 4).tolist())
    )
    remix_part = loss - logs["loss_abc"]  # abc.weight = 1
    assert remix_part.item() == pytest.approx(ref, rel=1e-5)
    # BN running statistics moved exactly as by the first MixUp chunk alone
    for a, r in zip(net.state_dict().items(), ref_net.state_dict().items()):
        torch.testing.assert_close(a[1], r[1], rtol=1e-5, atol=1e-6, msg=a[0])
    # the rows the terms read: [labeled | weak | strong 0]; the weak ones carry no backbone gradient
    torch.testing.assert_close(out.logits_abc[:b], o_lb.logits_abc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits_abc[2 * b :], o_s0.logits_abc, rtol=1e-5, atol=1e-6)
    assert out.feat.shape[0] == b + 2 * u


def test_weak_rows_train_the_heads_but_not_the_backbone(one_torch_thread):
    _, net, algo, batch, _ = _tiny_setup("remixmatch+abc+bacon")
    out = algo.base.forward_pass(net, batch, 0)
    out.proj[3:6].sum().backward()
    assert net.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in net.backbone.parameters())


def test_da_state_is_checkpointed_and_rotation_head_follows_its_weight():
    import bacon_zoo.algorithms as algos
    from bacon_zoo.config import build_config

    _, _, algo, _, _ = _tiny_setup("remixmatch")
    keys = set(algo.state_dict())
    assert {"remixmatch.p_model", "remixmatch.da_ready"} <= keys
    assert "remixmatch.p_target" not in keys  # derived from the labeled counts
    no_rot = build_config(None, None, ["algorithm=remixmatch", "remixmatch.lambda_rot=0"])
    assert algos.model_heads(no_rot) == ()
    assert [
        h.name
        for h in algos.model_heads(build_config(None, None, ["algorithm=remixmatch+abc+bacon"]))
    ] == ["rot", "abc", "proj"]
    assert (
        algos.eval_head_of("remixmatch") == "main" and algos.eval_head_of("remixmatch+abc") == "abc"
    )


@pytest.mark.parametrize(
    "recipe, base",
    [
        ("remixmatch_cifar10_lt", "cifar10_lt"),
        ("remixmatch_cifar100_lt", "cifar100_lt"),
        ("remixmatch_stl10_lt", "stl10_lt"),
    ],
)
def test_recipes_are_the_release_remixmatch_bacon_configs(recipe, base):
    """Table 1's ReMixMatch rows: the FixMatch recipe's split and protocol, mu = 1, the release's
    ReMixMatch constants, the contrastive term from step 10,001 of 300,000."""
    from bacon_zoo.config import build_config

    c, ref = build_config(recipe), build_config(base)
    assert c.algorithm == "remixmatch+abc+bacon" and c.mu == 1
    for key in ("dataset", "n1", "m1", "imb_ratio_l", "imb_ratio_u", "steps", "batch_size", "lr"):
        assert getattr(c, key) == getattr(ref, key), key
    r = c.remixmatch
    assert (r.temperature, r.mixup_alpha, r.lambda_u, r.lambda_u1, r.lambda_rot) == (
        0.5, 0.75, 1.5, 0.5, 0.5,
    )  # fmt: skip
    assert r.unsup_warmup * c.steps == 4687.5 and r.da_momentum == 0.999
    t0 = c.bacon.start * c.steps  # the term is on when step > t0
    assert 10_000 <= t0 < 10_001


# ---- end to end on the bundled digits data: train, resume exactly, two processes

ALGORITHMS = ("remixmatch", "remixmatch+abc", "remixmatch+abc+bacon")


def _ckpt_state(ckpt) -> dict[str, torch.Tensor]:
    """Model, EMA and algorithm tensors of a checkpoint."""
    from safetensors.torch import load_file

    from bacon_zoo.run.checkpoint import read_state

    out = {f"model.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    for name, state in read_state(ckpt, ("ema", "algorithm")).items():
        out |= {f"{name}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return out


# remixmatch+abc's parts are all in the other two: it runs with the slow tests
@pytest.mark.parametrize(
    "algorithm",
    [pytest.param(a, marks=pytest.mark.slow) if a == "remixmatch+abc" else a for a in ALGORITHMS],
)
def test_tiny_run_trains_and_resumes_exactly(tmp_path, monkeypatch, algorithm):
    """6 steps straight vs. stopped by SIGTERM after step 1 (checkpoint at 2) and resumed: the
    weights, the EMA and the algorithm's state (DA's running mean, BaCon's banks) are bit-identical."""
    import json
    import signal

    from accelerate.state import AcceleratorState
    from conftest import tiny_sets

    from bacon_zoo.algorithms.remixmatch import ReMixMatch
    from bacon_zoo.config import build_config
    from bacon_zoo.train.trainer import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def cfg(out, *extra):
        return build_config(
            None, None, [*tiny_sets("mu=1", f"algorithm={algorithm}", *extra), f"output_dir={out}"]
        )

    straight = train(cfg(tmp_path / "straight"))
    AcceleratorState._reset_state(True)
    assert straight.status == "complete", straight
    eval_head = "main" if algorithm == "remixmatch" else "abc"
    assert straight.summary["eval_head"] == eval_head
    rows = [json.loads(x) for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and len(rows[-1]["per_class"]) == 10

    def stop_after_step_1(self, step, total_steps):
        if step == 1:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(ReMixMatch, "after_step", stop_after_step_1, raising=False)
    stopped = train(cfg(tmp_path / "resumed"))
    AcceleratorState._reset_state(True)
    assert (stopped.status, stopped.step) == ("stopped", 2)
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resumed = train(cfg(tmp_path / "resumed", "resume=auto"))
    AcceleratorState._reset_state(True)
    assert resumed.status == "complete"

    a = _ckpt_state(tmp_path / "straight/checkpoints/step_0000006")
    b = _ckpt_state(tmp_path / "resumed/checkpoints/step_0000006")
    assert a.keys() == b.keys() and "algorithm.remixmatch.p_model" in a
    assert any(k.startswith("model.head_rot.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (
        bool(a["algorithm.remixmatch.da_ready"]) and a["algorithm.remixmatch.p_model"].sum() > 0.99
    )


# one launch checks the whole stack (DA, banks); the other two run with the slow tests
@pytest.mark.parametrize(
    "algorithm",
    [pytest.param(a, marks=pytest.mark.slow) if a != ALGORITHMS[-1] else a for a in ALGORITHMS],
)
def test_two_processes_keep_identical_state_on_both_ranks(tmp_path, algorithm):
    """`accelerate launch` with 2 CPU processes: at every checkpoint the model, EMA, DA's running mean
    and BaCon's banks are compared across the ranks bit for bit (tests/dist_remixmatch_check.py)."""
    from conftest import launch_two, set_args, tiny_sets

    script = Path(__file__).parent / "dist_remixmatch_check.py"
    sets = tiny_sets("mu=1", f"algorithm={algorithm}", "max_eval_samples=61", drop=("cpu",))
    proc = launch_two(script, "--cpu", *set_args(sets), "--output-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REMIXMATCH_RANKS_OK 2 " in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_host_sync_in_a_remixmatch_step(algorithm):
    """The trainer's step (every pass, DA, MixUp, rotation, the terms, diagnostics) never waits on the
    device (tests/syncs.SyncDetector, as tests/test_syncs.py checks the FixMatch family)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from syncs import SyncDetector

    from bacon_zoo.algorithms import create_algorithm
    from bacon_zoo.config import build_config
    from bacon_zoo.data import make_train_loaders, prepare_data
    from bacon_zoo.run import build_model
    from bacon_zoo.train.diagnostics import TrainingDiagnostics
    from bacon_zoo.train.trainer import make_step_parts, train_step

    flags = {
        "algorithm": algorithm, "dataset": "digits", "image_size": 8, "n1": 20, "m1": 40,
        "imb_ratio_l": 5, "imb_ratio_u": 5, "batch_size": 4, "mu": 1, "steps": 100, "cpu": True,
        "mixed_precision": "no", "seed": 0,
    }  # fmt: skip
    cfg = build_config(None, flags, ["bacon.start=0", "bacon.anchor_threshold=0"])
    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True, mixed_precision="no")
    torch.manual_seed(0)
    data = prepare_data(cfg)
    n_l, n_u = len(data.labeled.labels), len(data.unlabeled.labels)
    algo = create_algorithm(algorithm, cfg, data.num_classes, data.labeled_counts, n_l, n_u)
    parts = make_step_parts(cfg, build_model(cfg, data.num_classes), algo, acc)
    diag = TrainingDiagnostics(
        data.num_classes, algo.eval_head, 0.95, data.labeled_counts, data.split.unlabeled_counts,
        n_l, n_u,
    )  # fmt: skip
    lb, ulb = make_train_loaders(
        data.labeled, data.unlabeled, 4, 1, data.mean, data.std, seed=0,
        unlabeled_views=algo.unlabeled_views,
    )  # fmt: skip
    parts.model.train()
    sums: dict[str, torch.Tensor] = {}

    def step(t: int) -> dict:
        logs, out, batch = train_step(parts, next(lb), next(ulb), t)
        diag.update(out, batch, logs)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.detach().float()
        return logs

    step(0)  # the first step moves state to the device and fills constant caches
    with SyncDetector() as det:
        for t in range(1, 4):
            logs = step(t)
    AcceleratorState._reset_state(True)
    assert not det.events, det.report()
    assert float(logs["loss_rot"]) > 0 and float(logs["loss_u"]) > 0
