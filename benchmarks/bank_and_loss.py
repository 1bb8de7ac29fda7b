"""BaCon's per-step bank and loss work alone: ours (bacon_zoo.algorithms) vs a per-class-loop baseline.

One step of BaCon's extra work, for n = B + mu*B anchors (default 64 + 128 = 192, d = 16):
  bank update     label-bank write (before the loss) + feature-bank write (after the step)
  center refresh  class centers and BTA temperatures for the loss
  loss            contrastive loss forward + backward (gradient into the anchor projections)

ours   MemoryBank (per-class sums/counts updated incrementally from the slots a step changes, sync-free
       writes), bank.centers(), bta_temperatures() and bacon_contrastive_terms() (a few matrix
       products); plus the amortised cost of the full recompute `resync()` it runs every
       BaCon.resync_every steps.
naive  the release's approach, written here from docs/method.md: masked bank writes; every center recomputed
       from the whole bank each step with a Python loop over classes (O(N K)); the loss with a Python
       loop over the classes present in the batch, each building its negative set E_k.

Both start from the same fully written bank (every slot has a label and a feature, so both define the
same centers) and the script checks they give the same centers and loss before timing. The naive
refresh is O(N K): a configuration whose single run is predicted to exceed --naive-max-s is skipped,
and one whose first run exceeds --naive-budget-s is reported from that single run (the JSON says so).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from bacon_zoo.algorithms import (  # noqa: E402
    BaCon,
    MemoryBank,
    bacon_contrastive_terms,
    bta_temperatures,
    reduce_anchors,
)

TAU0, ETA, NEG_SCALE, TOPK, DIM = 0.1, 0.005, 64.0, 3, 16
PROGRESS = 0.6  # t/T: past BaCon's start, BTA still active
TARGET = {"num_classes": 100, "bank": 50_000, "speedup": 20.0}


# ---------------------------------------------------------------------------------------------
# the per-class-loop baseline (the release's approach), from the spec


class NaiveBank:
    """Plain label and feature banks; centers recomputed from the whole bank with a class loop."""

    def __init__(self, labels: Tensor, feats: Tensor, num_classes: int) -> None:
        self.labels, self.feats, self.num_classes = labels.clone(), feats.clone(), num_classes

    @torch.no_grad()
    def write_labels(self, slots: Tensor, labels: Tensor, mask: Tensor) -> None:
        self.labels[slots[mask]] = labels[mask]

    @torch.no_grad()
    def write_feats(self, slots: Tensor, feats: Tensor, mask: Tensor) -> None:
        self.feats[slots[mask]] = feats.detach()[mask]

    @torch.no_grad()
    def refresh(self, progress: float) -> tuple[Tensor, Tensor, Tensor]:
        """(centers, valid, tau): c_k = mean of Fb over Yb == k, n_k = |Yb == k|, BTA from n."""
        centers = torch.zeros(self.num_classes, self.feats.shape[1], device=self.feats.device)
        counts = torch.zeros(self.num_classes, device=self.feats.device)
        for k in range(self.num_classes):
            member = self.labels == k
            counts[k] = member.sum()
            if counts[k] > 0:
                centers[k] = self.feats[member].mean(0)
        valid = counts > 0
        ratio = counts / counts.max().clamp_min(1)
        tau = TAU0 * (1 - ETA * (1 - progress) ** 2 * ratio.sqrt())
        return centers, valid, tau


def naive_loss(
    z: Tensor,
    labels: Tensor,
    is_labeled: Tensor,
    topk: Tensor,
    selected: Tensor,
    centers: Tensor,
    valid: Tensor,
    tau: Tensor,
) -> Tensor:
    """L_con with a Python loop over the classes present among the anchors."""
    zn = F.normalize(z, dim=1)
    cn = F.normalize(centers, dim=1)
    total = z.new_zeros(())
    kept = z.new_zeros(())
    for k in labels.unique().tolist():
        if not bool(valid[k]):
            continue
        is_k = labels == k
        in_topk = (topk == k).any(1)
        negatives = torch.where(is_labeled, labels != k, ~in_topk)
        if not bool(negatives.any()):
            continue
        anchors = zn[is_k]
        pi = torch.exp(anchors @ cn[k] / tau[k])
        nu = torch.exp(anchors @ zn[negatives].T / TAU0).mean()
        loss_k = -torch.log(pi / (pi + NEG_SCALE * nu + 1e-8))
        s = selected[is_k].to(z.dtype)
        total = total + (s * loss_k).sum()
        kept = kept + s.sum()
    return total / (kept + 1e-8)


# ---------------------------------------------------------------------------------------------
# a step's inputs


def make_state(
    num_classes: int, bank_size: int, device: torch.device, seed: int
) -> tuple[Tensor, Tensor, int]:
    """A fully written bank: (labels [N], feats [N, d], N_L); every class present."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (bank_size,), generator=g)
    labels[: min(bank_size, num_classes)] = torch.arange(min(bank_size, num_classes))
    feats = torch.randn(bank_size, DIM, generator=g)
    return labels.to(device), feats.to(device), bank_size // 5


def make_batch(
    num_classes: int, n_lb: int, n_ulb: int, num_labeled: int, bank_size: int,
    device: torch.device, seed: int,
) -> dict[str, Tensor]:  # fmt: skip
    """One step's anchors: slots, labels, top-k, selection and write masks, projections."""
    g = torch.Generator().manual_seed(seed)
    n = n_lb + n_ulb
    logits = torch.randn(n_ulb, num_classes, generator=g) * 3
    k = min(TOPK, num_classes)
    topk_u = logits.topk(k, dim=1).indices
    y_lb = torch.randint(num_classes, (n_lb,), generator=g)
    labels = torch.cat([y_lb, topk_u[:, 0]])
    slots = torch.cat(
        [
            torch.randperm(num_labeled, generator=g)[:n_lb],
            num_labeled + torch.randperm(bank_size - num_labeled, generator=g)[:n_ulb],
        ]
    )
    is_labeled = torch.arange(n) < n_lb
    ok = is_labeled | (torch.rand(n, generator=g) < 0.7)  # label-bank writes (conf >= 0.95)
    selected = ok & (torch.rand(n, generator=g) < 0.8)  # anchors / feature writes (conf >= 0.98)
    batch = {
        "slots": slots,
        "labels": labels,
        "is_labeled": is_labeled,
        "topk": torch.cat([torch.zeros(n_lb, k, dtype=torch.long), topk_u]),
        "ok": ok,
        "selected": selected,
        "z0": torch.randn(n, DIM, generator=g),
    }
    return {name: t.to(device) for name, t in batch.items()}


# ---------------------------------------------------------------------------------------------
# the two implementations, as timed callables


class Ours:
    def __init__(self, labels: Tensor, feats: Tensor, num_classes: int, num_labeled: int) -> None:
        n = labels.numel()
        self.bank = MemoryBank(num_classes, num_labeled, n - num_labeled, DIM).to(labels.device)
        every = torch.arange(n, device=labels.device)
        ones = torch.ones(n, dtype=torch.bool, device=labels.device)
        self.bank.update_labels(every, labels, ones)
        self.bank.update_features(every, feats, ones)

    def write_labels(self, b: dict[str, Tensor]) -> None:
        self.bank.update_labels(b["slots"], b["labels"], b["ok"])

    def write_feats(self, b: dict[str, Tensor], z: Tensor) -> None:
        self.bank.update_features(b["slots"], z.detach(), b["selected"])

    def refresh(self) -> tuple[Tensor, Tensor, Tensor]:
        centers, valid = self.bank.centers()
        tau = bta_temperatures(self.bank.class_counts(), PROGRESS, TAU0, ETA)
        return centers, valid, tau

    @staticmethod
    def loss(
        b: dict[str, Tensor], z: Tensor, centers: Tensor, valid: Tensor, tau: Tensor
    ) -> Tensor:
        losses, usable = bacon_contrastive_terms(
            z, b["labels"], b["is_labeled"], b["topk"], centers, tau, TAU0, NEG_SCALE, valid
        )
        return reduce_anchors(losses, usable & b["selected"])


def leaf(b: dict[str, Tensor]) -> Tensor:
    return b["z0"].clone().requires_grad_(True)


def ours_step(o: Ours, b: dict[str, Tensor]) -> None:
    z = leaf(b)
    o.write_labels(b)
    centers, valid, tau = o.refresh()
    Ours.loss(b, z, centers, valid, tau).backward()
    o.write_feats(b, z)


def naive_step(nb: NaiveBank, b: dict[str, Tensor]) -> None:
    z = leaf(b)
    nb.write_labels(b["slots"], b["labels"], b["ok"])
    centers, valid, tau = nb.refresh(PROGRESS)
    naive_loss(
        z, b["labels"], b["is_labeled"], b["topk"], b["selected"], centers, valid, tau
    ).backward()
    nb.write_feats(b["slots"], z, b["selected"])


def check_agreement(o: Ours, nb: NaiveBank, b: dict[str, Tensor]) -> dict[str, Any]:
    """Same centers, loss and gradient from both, on the same bank and batch."""
    c1, v1, t1 = o.refresh()
    c2, v2, t2 = nb.refresh(PROGRESS)
    z1, z2 = leaf(b), leaf(b)
    l1 = Ours.loss(b, z1, c1, v1, t1)
    l2 = naive_loss(z2, b["labels"], b["is_labeled"], b["topk"], b["selected"], c2, v2, t2)
    l1.backward()
    l2.backward()
    out = {
        "centers_max_abs_diff": float((c1 - c2).abs().max()),
        "tau_max_abs_diff": float((t1 - t2).abs().max()),
        "loss_ours": float(l1.detach()),
        "loss_naive": float(l2.detach()),
        "grad_max_abs_diff": float((z1.grad - z2.grad).abs().max()),
    }
    out["agree"] = (
        out["centers_max_abs_diff"] < 1e-4
        and abs(out["loss_ours"] - out["loss_naive"]) < 1e-4 * max(1.0, abs(out["loss_naive"]))
        and out["grad_max_abs_diff"] < 1e-4
    )
    return out


# ---------------------------------------------------------------------------------------------


def run_config(
    k: int, n: int, device: torch.device, args: argparse.Namespace, predicted: float | None
) -> dict[str, Any]:
    common.reset_cuda_peak(device)
    labels, feats, n_l = make_state(k, n, device, args.seed)
    b = make_batch(k, args.batch_size, args.mu * args.batch_size, n_l, n, device, args.seed + 1)
    ours, naive = Ours(labels, feats, k, n_l), NaiveBank(labels, feats, k)
    del labels, feats
    agreement = check_agreement(ours, naive, b)
    centers, valid, tau = ours.refresh()
    n_centers, n_valid, n_tau = naive.refresh(PROGRESS)

    def ours_update() -> None:
        ours.write_labels(b)
        ours.write_feats(b, b["z0"])

    def ours_loss() -> None:
        Ours.loss(b, leaf(b), centers, valid, tau).backward()

    def naive_update() -> None:
        naive.write_labels(b["slots"], b["labels"], b["ok"])
        naive.write_feats(b["slots"], b["z0"], b["selected"])

    def naive_loss_fb() -> None:
        naive_loss(
            leaf(b),
            b["labels"],
            b["is_labeled"],
            b["topk"],
            b["selected"],
            n_centers,
            n_valid,
            n_tau,
        ).backward()

    def naive_refresh() -> None:
        naive.refresh(PROGRESS)

    fns = {
        "ours.bank_update": ours_update,
        "ours.center_refresh": ours.refresh,
        "ours.loss_fwd_bwd": ours_loss,
        "ours.full_step": lambda: ours_step(ours, b),
        "ours.resync": ours.bank.resync,
        "naive.bank_update": naive_update,
        "naive.loss_fwd_bwd": naive_loss_fb,
    }
    caps = dict.fromkeys(fns, args.repeats)
    caps["ours.resync"] = 5
    # the O(N K) refresh: skipped, timed once on its own, or timed with the rest
    refresh_note: dict[str, Any] = {}
    if predicted is not None and predicted > args.naive_max_s:
        refresh_note = {
            "skipped": True,
            "reason": f"predicted {predicted:.1f} s per call > --naive-max-s {args.naive_max_s}",
        }
    elif predicted is not None and predicted > args.naive_budget_s / 3:
        common.synchronize(device)
        t0 = common.now()
        naive_refresh()
        common.synchronize(device)
        refresh_note = common.summarize([common.now() - t0])
        refresh_note["single_run"] = True
        refresh_note["note"] = f"predicted {predicted:.2f} s per call: timed once (> budget/3)"
    else:
        fns["naive.center_refresh"] = naive_refresh
        caps["naive.center_refresh"] = args.repeats
    timed = common.time_interleaved(
        fns, device, warmup=args.warmup, max_calls=caps, min_calls=3, budget_s=args.budget_s
    )
    if "naive.center_refresh" not in timed:
        timed["naive.center_refresh"] = {"median_ms": None, **refresh_note}
    ours_res = {key.split(".", 1)[1]: v for key, v in timed.items() if key.startswith("ours.")}
    naive_res = {key.split(".", 1)[1]: v for key, v in timed.items() if key.startswith("naive.")}
    resync_every = BaCon.resync_every or 0
    amortised = ours_res["resync"]["median_ms"] / resync_every if resync_every else 0.0
    ours_total = ours_res["full_step"]["median_ms"] + amortised
    parts = [naive_res[p]["median_ms"] for p in ("bank_update", "center_refresh", "loss_fwd_bwd")]
    naive_total = sum(parts) if all(p is not None for p in parts) else None
    speedup = naive_total / ours_total if naive_total is not None else None
    # the same from process CPU time, which a busy shared CPU inflates less than wall time
    cpu_parts = [
        naive_res[p].get("cpu_median_ms") for p in ("bank_update", "center_refresh", "loss_fwd_bwd")
    ]
    speedup_cpu = None
    if all(p is not None for p in cpu_parts) and device.type == "cpu":
        ours_cpu = ours_res["full_step"]["cpu_median_ms"] + (
            ours_res["resync"]["cpu_median_ms"] / resync_every if resync_every else 0.0
        )
        speedup_cpu = sum(cpu_parts) / ours_cpu
    # paired per round (every callable ran once per round, in rotation), median over the rounds
    speedup_paired = None
    seqs = [
        naive_res[p].get("samples_ms") for p in ("bank_update", "center_refresh", "loss_fwd_bwd")
    ]
    if all(seqs):
        m = min(len(x) for x in seqs)
        full = ours_res["full_step"]["samples_ms"]
        speedup_paired = statistics.median(
            (seqs[0][i] + seqs[1][i] + seqs[2][i]) / (full[i] + amortised) for i in range(m)
        )
    row = {
        "num_classes": k,
        "bank_slots": n,
        "anchors": args.batch_size * (1 + args.mu),
        "agreement": agreement,
        "ours": ours_res,
        "naive": naive_res,
        "ours_total_ms": ours_total,
        "ours_resync_amortised_ms": amortised,
        "naive_total_ms": naive_total,
        "naive_total_is": "sum of its component medians (update + refresh + loss)",
        "speedup": speedup,
        "speedup_is": "naive_total_ms / ours_total_ms (ratio of medians)",
        "speedup_paired_median": speedup_paired,
        "speedup_process_cpu_time": speedup_cpu,
        "peak_rss_mb_so_far": round(common.peak_rss_mb(), 1),
        "cuda_max_allocated_mb": common._round(common.cuda_peak_mb(device)),
    }
    print(
        f"  K={k:>5} N={n:>8}: ours {common.fmt_ms(ours_total)} ms "
        f"(update {common.fmt_ms(ours_res['bank_update']['median_ms'])}, "
        f"refresh {common.fmt_ms(ours_res['center_refresh']['median_ms'])}, "
        f"loss {common.fmt_ms(ours_res['loss_fwd_bwd']['median_ms'])}) | naive "
        f"{common.fmt_ms(naive_total)} ms (refresh "
        f"{common.fmt_ms(naive_res['center_refresh']['median_ms'])}, loss "
        f"{common.fmt_ms(naive_res['loss_fwd_bwd']['median_ms'])}) | speed-up "
        f"{'-' if speedup is None else f'{speedup:.1f}x'}"
        f"{'' if agreement['agree'] else '  [RESULTS DIFFER]'}",
        flush=True,
    )
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--classes", default="10,100,1000")
    p.add_argument("--banks", default="10000,50000,200000,1000000", help="bank sizes N (slots)")
    p.add_argument("--batch-size", type=int, default=64, help="B (anchors: B + mu*B)")
    p.add_argument("--mu", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30, help="max timed calls per measurement")
    p.add_argument(
        "--budget-s", type=float, default=4.0, help="timed seconds per (K, N) configuration"
    )
    p.add_argument(
        "--naive-budget-s",
        type=float,
        default=4.0,
        help="a naive refresh predicted above a third of this is timed once, on its own",
    )
    p.add_argument(
        "--naive-max-s", type=float, default=6.0, help="skip a naive refresh predicted slower"
    )
    p.add_argument(
        "--threads", default="auto", help="torch intra-op threads: auto (see common.py) or N"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = common.now()
    args = parse_args(argv)
    device = common.get_device(args.device)
    threads = common.configure_threads(args.threads, device)
    print(f"threads: {threads['reason']}", flush=True)
    classes = [int(x) for x in args.classes.split(",") if x.strip()]
    banks = sorted(int(x) for x in args.banks.split(",") if x.strip())
    print(
        f"bank_and_loss on {device} ({common.device_name(device)}): K={classes}, N={banks}, "
        f"{args.batch_size * (1 + args.mu)} anchors, d={DIM}",
        flush=True,
    )
    rows = []
    for k in classes:
        prev: tuple[int, float] | None = None  # (N, naive refresh seconds) to predict the next
        for n in banks:
            predicted = prev[1] * n / prev[0] if prev else None
            row = run_config(k, n, device, args, predicted)
            rows.append(row)
            ms = row["naive"]["center_refresh"]["median_ms"]
            if ms is not None:
                prev = (n, ms / 1e3)
            elif prev is not None:
                prev = (n, predicted)
    target_row = next(
        (r for r in rows if r["num_classes"] == TARGET["num_classes"] and r["bank_slots"] == TARGET["bank"]),
        None,
    )  # fmt: skip
    targets = []
    if target_row is not None and target_row["speedup"] is not None:
        targets.append(
            {
                "name": "bank+loss speed-up over the per-class loop at K=100, 50k bank",
                "value": round(target_row["speedup"], 2),
                "threshold": f">= {TARGET['speedup']}",
                "met": target_row["speedup"] >= TARGET["speedup"],
            }
        )
    for t in targets:
        print(
            f"target {t['name']}: {t['value']}x {t['threshold']} -> {'met' if t['met'] else 'MISSED'}"
        )
    if not all(r["agreement"]["agree"] for r in rows):
        print("WARNING: ours and the per-class loop disagree on some configuration (see JSON)")
    payload = {
        "settings": {
            "threads": threads,
            "batch_size": args.batch_size,
            "mu": args.mu,
            "anchors": args.batch_size * (1 + args.mu),
            "proj_dim": DIM,
            "progress": PROGRESS,
            "warmup": args.warmup,
            "max_repeats": args.repeats,
            "budget_s": args.budget_s,
            "naive_budget_s": args.naive_budget_s,
            "naive_max_s": args.naive_max_s,
            "resync_every": BaCon.resync_every,
            "bank_state": "every slot labelled and written (random); N_L = N/5",
            "dtype": "float32 (the loss runs in float32 under autocast too)",
        },
        "rows": rows,
        "targets": targets,
    }
    if not args.no_write:
        common.write_result("bank_and_loss", device, payload, started)
    return payload


if __name__ == "__main__":
    main()
