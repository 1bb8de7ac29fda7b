"""`bacon-zoo analyze`: what a trained run's feature space looks like, and how two runs differ.

One pass of the run's EMA model over its test set (the same split, the same evaluation subset, the
run's evaluation head) gives predictions, backbone features f(x) and projections g(f(x)); they are
saved to `predictions.npz` and every number of `analysis.md` is recomputed from that file, so the
page can always be checked against the arrays. t-SNE runs on L2-normalised vectors (the contrastive
loss compares directions) of a fixed subsample, and the separation number is the mean silhouette
with cosine distance on the same subsample.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import read_jsonl as read_metrics
from bacon_zoo.metrics import classification_metrics, head_medium_tail

GROUPS = ("head", "medium", "tail")
METRIC_ROWS = (  # (key in classification_metrics, label in the pages)
    ("top1", "top-1"),
    ("balanced_acc", "balanced accuracy"),
    ("gmean", "geometric mean"),
    ("head", "head"),
    ("medium", "medium"),
    ("tail", "tail"),
)
SUBSAMPLE_SEED = 0  # the t-SNE / silhouette subsample and t-SNE's random_state


# ---------------------------------------------------------------------------------------------
# pure helpers on arrays


def group_of(labeled_counts: list[int]) -> list[str]:
    """'head' / 'medium' / 'tail' for every class (the split used by the training metrics)."""
    out = [""] * len(labeled_counts)
    for name, idx in zip(GROUPS, head_medium_tail(labeled_counts)):
        for k in idx:
            out[k] = name
    return out


def subsample_indices(n: int, max_points: int, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Sorted positions of at most `max_points` of `n` points; the same (n, max_points) -> same set."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def tsne_2d(x: np.ndarray, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """2-D t-SNE of the L2-normalised rows of x (fixed random_state, PCA init).

    Runs on one OpenMP thread: next to torch's own OpenMP runtime, or on a busy machine, the
    Barnes-Hut gradient's threads spin on each other (5x slower measured on 2 shared cores).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(x)
    if n < 5:  # t-SNE needs perplexity < n; a handful of points needs no embedding
        out = np.zeros((n, 2))
        out[:, : min(2, x.shape[1])] = _unit(x)[:, :2]
        return out
    perplexity = float(min(30.0, (n - 1) / 3.0))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1)
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(_unit(x).astype(np.float32)).astype(np.float64)


def separation(x: np.ndarray, labels: np.ndarray, groups: list[str]) -> dict[str, float]:
    """Mean silhouette (cosine distance) of the points of each group's classes, and of all points.

    +1: every point is much closer to its own class than to the nearest other class; 0: overlapping
    classes; < 0: closer to another class. NaN when fewer than two classes are present.
    """
    from sklearn.metrics import silhouette_samples

    labels = np.asarray(labels)
    present = np.unique(labels)
    nan = {g: math.nan for g in (*GROUPS, "all")}
    if len(present) < 2 or len(present) >= len(labels):
        return nan
    s = silhouette_samples(_unit(x), labels, metric="cosine")
    out = {}
    for g in GROUPS:
        in_group = np.array([groups[y] == g for y in labels])
        out[g] = float(s[in_group].mean()) if in_group.any() else math.nan
    out["all"] = float(s.mean())
    return out


def per_class_precision(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Of the test images predicted as k, the share that are k; NaN if k is never predicted."""
    hit = np.bincount(preds, weights=(preds == labels), minlength=num_classes)
    total = np.bincount(preds, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hit / total


def row_normalised_confusion(preds: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """confusion[true, pred] / row sums (each row: where the images of one class went)."""
    cm = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k).astype(np.float64)
    return cm / np.clip(cm.sum(1, keepdims=True), 1, None)


# ---------------------------------------------------------------------------------------------
# loading a run


def find_checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """None -> the latest complete checkpoint; a step number or a step_N directory otherwise."""
    from bacon_zoo.train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir / "checkpoints")
    if checkpoint is None:
        if not ckpts:
            raise UserError(
                f"{run_dir} has no complete checkpoint (checkpoints/step_N); train or resume it first"
            )
        return ckpts[-1]
    text = str(checkpoint)
    if text.isdigit():
        match = [p for p in ckpts if int(p.name.removeprefix("step_")) == int(text)]
        if not match:
            steps = ", ".join(str(int(p.name.removeprefix("step_"))) for p in ckpts) or "none"
            raise UserError(f"{run_dir} has no checkpoint at step {text}; available steps: {steps}")
        return match[0]
    for path in (Path(text), run_dir / "checkpoints" / text):
        if path.is_dir():
            return path
    raise UserError(
        f"--checkpoint {text} is not a directory; give a step number or RUN_DIR/checkpoints/step_N"
    )


def run_eval_head(run_dir: Path, algorithm: str) -> str:
    """The head the run was evaluated with: summary.json's, else the algorithm's."""
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            head = json.loads(summary_path.read_text()).get("eval_head")
        except json.JSONDecodeError:
            head = None
        if head in ("main", "abc"):
            return head
    from bacon_zoo.algorithms import ALGORITHMS

    cls = ALGORITHMS.get(algorithm)
    return cls.eval_head if cls is not None else "abc"


def load_ema_model(cfg: Any, ckpt: Path, num_classes: int) -> torch.nn.Module:
    """The run's BaconNet with the checkpoint's EMA weights (what training evaluates)."""
    from bacon_zoo.models import BaconNet
    from bacon_zoo.train.checkpoint import load_ema_weights

    model = BaconNet(
        cfg.backbone,
        num_classes=num_classes,
        proj_dim=cfg.bacon.proj_dim,
        pretrained=False,
        backbone_kwargs=cfg.backbone_kwargs,
    )
    state = load_ema_weights(ckpt)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise UserError(
            f"the EMA weights in {ckpt} don't fit a {cfg.backbone} BaconNet ({first}); "
            "was config.yaml edited after training? restore it"
        ) from None
    return model


def default_device() -> torch.device:
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    loader: Any,
    head: str,
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """labels, preds, probs (of `head`), feats f(x), proj g(f(x)), indices over the whole loader."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("labels", "probs", "feats", "proj")}
    cols["indices"] = []
    for batch in loader:
        x = batch["x"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        logits = out.logits_abc if head == "abc" else out.logits
        cols["probs"].append(logits.float().softmax(-1).cpu())
        cols["feats"].append(out.feat.float().cpu())
        cols["proj"].append(out.proj.float().cpu())
        cols["labels"].append(batch["y"].cpu())
        cols["indices"].append(batch["idx"].cpu())
    arrays = {k: torch.cat(v).numpy() for k, v in cols.items()}
    arrays["labels"] = arrays["labels"].astype(np.int64)
    arrays["indices"] = arrays["indices"].astype(np.int64)
    arrays["preds"] = arrays["probs"].argmax(-1).astype(np.int64)
    return arrays


@dataclass
class RunAnalysis:
    """One run's test-set pass: arrays (what predictions.npz holds) and the run's metadata."""

    run_dir: Path
    name: str
    algorithm: str
    backbone: str
    dataset: str
    checkpoint: Path
    step: int | None
    eval_head: str
    class_names: list[str]
    labeled_counts: list[int]
    unlabeled_counts: list[int]
    arrays: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.labeled_counts)

    @property
    def groups(self) -> list[str]:
        return group_of(self.labeled_counts)

    @property
    def metrics(self) -> dict:
        a = self.arrays
        return classification_metrics(
            a["preds"], a["labels"], self.num_classes, self.labeled_counts
        )

    def separation(self, space: str) -> dict[str, float]:
        """Silhouette per group of `space` ("feats" or "proj") on the t-SNE subsample."""
        idx = self.arrays["subsample"]
        return separation(self.arrays[space][idx], self.arrays["labels"][idx], self.groups)


def _step_of(ckpt: Path) -> int | None:
    m = re.fullmatch(r"step_(\d+)", ckpt.name)
    return int(m.group(1)) if m else None


def analyze_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    max_points: int = 2000,
    full_test: bool = False,
    device: torch.device | None = None,
) -> RunAnalysis:
    """Rebuild the run's test set, run its EMA model over it, embed a subsample with t-SNE."""
    from bacon_zoo.config import load_run_config
    from bacon_zoo.data import make_eval_loader, prepare_data

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    split_path = run_dir / "split.json"
    if not split_path.is_file():
        raise UserError(f"{run_dir} has no split.json; analyze a run directory written by train")
    if full_test:
        cfg.max_eval_samples = None
    ckpt = find_checkpoint(run_dir, checkpoint)
    data = prepare_data(cfg, split_path=split_path)
    model = load_ema_model(cfg, ckpt, data.num_classes)
    workers = min(cfg.num_workers, os.cpu_count() or 1)
    loader = make_eval_loader(data.test, cfg.eval_batch_size, data.mean, data.std, workers)
    head = run_eval_head(run_dir, cfg.algorithm)
    arrays = extract(model, loader, head, device or default_device(), cfg.channels_last)

    sub = subsample_indices(len(arrays["labels"]), max_points)
    arrays["subsample"] = sub
    arrays["tsne_feats"] = tsne_2d(arrays["feats"][sub])
    arrays["tsne_proj"] = tsne_2d(arrays["proj"][sub])
    return RunAnalysis(
        run_dir=run_dir,
        name=run_dir.resolve().name,
        algorithm=cfg.algorithm,
        backbone=cfg.backbone,
        dataset=cfg.dataset,
        checkpoint=ckpt,
        step=_step_of(ckpt),
        eval_head=head,
        class_names=list(data.class_names),
        labeled_counts=list(map(int, data.labeled_counts)),
        unlabeled_counts=list(map(int, data.split.unlabeled_counts)),
        arrays=arrays,
        history=read_metrics(run_dir / "metrics.jsonl"),
    )


def save_predictions(a: RunAnalysis, path: Path) -> None:
    """predictions.npz: labels, preds, probs, feats, proj, indices, subsample, tsne_*, step, counts."""
    np.savez(
        path,
        **a.arrays,
        step=-1 if a.step is None else a.step,
        labeled_counts=np.asarray(a.labeled_counts),
        unlabeled_counts=np.asarray(a.unlabeled_counts),
        class_names=np.asarray(a.class_names),
    )


# ---------------------------------------------------------------------------------------------
# Markdown pages


def _f(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _group_means(values: list | None, groups: list[str]) -> dict[str, float]:
    """Mean of a per-class list over each group's classes, ignoring None/NaN."""
    out = {}
    for g in GROUPS:
        vals = [
            v
            for v, gg in zip(values or [], groups)
            if gg == g and v is not None and not math.isnan(v)
        ]
        out[g] = float(np.mean(vals)) if vals else math.nan
    return out


def last_diagnostics(history: list[dict]) -> tuple[int, dict] | None:
    """(step, diagnostics) of the last evaluation record that has them."""
    for r in reversed(history):
        if isinstance(r.get("diagnostics"), dict):
            return int(r["step"]), r["diagnostics"]
    return None


def _diagnostics_section(a: RunAnalysis) -> list[str]:
    found = last_diagnostics(a.history)
    if found is None:
        return []
    step, d = found
    groups = a.groups
    rows = []
    spec = [
        ("pl_precision", "pseudo-label precision (%)", 2),
        ("pl_recall", "pseudo-label recall (%)", 2),
        ("bank_precision", "label-bank precision, unlabeled slots (%)", 2),
        ("center_drift", "center drift since previous eval (1 - cos)", 5),
        ("intra_spread", "intra-class spread (mean 1 - cos to center)", 4),
    ]
    for key, label, digits in spec:
        if key in d:
            m = _group_means(d[key], groups)
            rows.append([label, *(_f(m[g], digits) for g in GROUPS)])
    if "bank_labeled" in d:
        for key, label in (
            ("bank_labeled", "label bank n_k, labeled slots"),
            ("bank_unlabeled", "label bank n_k, unlabeled slots"),
        ):
            sums = {g: sum(v for v, gg in zip(d[key], groups) if gg == g) for g in GROUPS}
            rows.append([label + " (sum)", *(str(sums[g]) for g in GROUPS)])
        true_u = {g: sum(v for v, gg in zip(a.unlabeled_counts, groups) if gg == g) for g in GROUPS}
        rows.append(["true unlabeled count (sum)", *(str(true_u[g]) for g in GROUPS)])
    lines = [
        "",
        f"## Training diagnostics (metrics.jsonl, evaluation at step {step})",
        "",
        f"Group means over the window of {d.get('window_steps', '?')} steps before that evaluation "
        f"(pseudo-labels: max softmax >= {d.get('threshold', '?')}); curves in `curves.png`.",
        "",
        *_table(["quantity", *GROUPS], rows),
    ]
    if "pl_mask" in d:
        lines += [
            "",
            f"Confident share of the weak unlabeled views: {_f(d['pl_mask'], 3)}; accuracy of the "
            f"confident pseudo-labels: {_f(d.get('pl_accuracy'))} %.",
        ]
    return lines


def analysis_markdown(a: RunAnalysis, figures: list[str]) -> str:
    """analysis.md: every number from `a.arrays` (what predictions.npz holds), plus diagnostics."""
    m, k, groups = a.metrics, a.num_classes, a.groups
    labels, preds = a.arrays["labels"], a.arrays["preds"]
    precision = per_class_precision(preds, labels, k)
    test_n = np.bincount(labels, minlength=k)
    members = {g: [c for c in range(k) if groups[c] == g] for g in GROUPS}
    lines = [
        f"# Analysis of `{a.name}`",
        "",
        f"Run `{a.run_dir}`: algorithm **{a.algorithm}**, backbone `{a.backbone}`, data set "
        f"`{a.dataset}`. EMA weights of `{a.checkpoint.name}`"
        + (f" (step {a.step})" if a.step is not None else "")
        + f", `{a.eval_head}` head, {len(labels)} test images. Every number below is recomputed "
        "from `predictions.npz` next to this page.",
        "",
        "## Accuracy",
        "",
        *_table(["metric", "value (%)"], [[label, _f(m[key])] for key, label in METRIC_ROWS]),
        "",
        "Groups by labeled count: "
        + "; ".join(f"{g} = classes {', '.join(map(str, members[g]))}" for g in GROUPS)
        + ".",
        "",
        "## Feature-space separation",
        "",
        f"Mean silhouette (cosine distance) of the test points by true class, on the "
        f"{len(a.arrays['subsample'])} points of the t-SNE subsample: 1 = tight, well separated "
        "classes; 0 = overlapping; < 0 = closer to another class than to its own.",
        "",
    ]
    rows = []
    for space, label in (("feats", "backbone feature f(x)"), ("proj", "projection g(f(x))")):
        s = a.separation(space)
        dim = a.arrays[space].shape[1]
        rows.append([f"{label}, {dim} dims", *(_f(s[g], 3) for g in (*GROUPS, "all"))])
    lines += _table(["space", *GROUPS, "all"], rows)
    lines += ["", "## Per class", ""]
    rows = []
    for c in range(k):
        acc = m["per_class"][c]
        rows.append(
            [
                str(c),
                a.class_names[c] if c < len(a.class_names) else str(c),
                groups[c],
                str(a.labeled_counts[c]),
                str(a.unlabeled_counts[c]),
                str(int(test_n[c])),
                _f(acc),
                _f(100.0 * precision[c]),
            ]
        )
    header = ["class", "name", "group", "labeled", "unlabeled", "test"]
    lines += _table([*header, "accuracy (%)", "precision (%)"], rows)
    lines += _diagnostics_section(a)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def compare_markdown(a: RunAnalysis, b: RunAnalysis, figures: list[str], npz_b: str) -> str:
    """The side-by-side page; Δ = a - b (the analysed run minus --compare)."""
    ma, mb, groups = a.metrics, b.metrics, a.groups
    lines = [
        f"# `{a.name}` vs `{b.name}`",
        "",
        f"`{a.name}`: {a.algorithm}, `{a.backbone}`, step {a.step}, `{a.eval_head}` head. "
        f"`{b.name}`: {b.algorithm}, `{b.backbone}`, step {b.step}, `{b.eval_head}` head. "
        f"Same {len(a.arrays['labels'])} test images; Δ = `{a.name}` - `{b.name}`. Numbers are "
        f"recomputed from `predictions.npz` and `{npz_b}`.",
        "",
        "## Accuracy (%)",
        "",
    ]
    rows = [
        [label, _f(ma[key]), _f(mb[key]), _f(ma[key] - mb[key], signed=True)]
        for key, label in METRIC_ROWS
    ]
    lines += _table(["metric", a.name, b.name, "Δ"], rows)
    lines += ["", "## Feature-space separation (mean silhouette, cosine)", ""]
    rows = []
    for space, label in (("feats", "f(x)"), ("proj", "g(f(x))")):
        sa, sb = a.separation(space), b.separation(space)
        for g in (*GROUPS, "all"):
            rows.append([label, g, _f(sa[g], 3), _f(sb[g], 3), _f(sa[g] - sb[g], 3, True)])
    lines += _table(["space", "group", a.name, b.name, "Δ"], rows)
    lines += ["", "## Per-class accuracy (%)", ""]
    rows = []
    for c in range(a.num_classes):
        pa, pb = ma["per_class"][c], mb["per_class"][c]
        delta = None if pa is None or pb is None else pa - pb
        name = a.class_names[c] if c < len(a.class_names) else str(c)
        rows.append(
            [
                str(c),
                name,
                groups[c],
                str(a.labeled_counts[c]),
                _f(pa),
                _f(pb),
                _f(delta, signed=True),
            ]
        )
    lines += _table(["class", "name", "group", "labeled", a.name, b.name, "Δ"], rows)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the command


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "other"


def write_run_report(a: RunAnalysis, out: Path) -> Path:
    """predictions.npz, the PNGs and analysis.md of one run in `out`."""
    from bacon_zoo.analysis import plots

    out.mkdir(parents=True, exist_ok=True)
    save_predictions(a, out / "predictions.npz")
    figures = plots.run_figures(a, out)
    path = out / "analysis.md"
    path.write_text(analysis_markdown(a, figures))
    return path


def write_compare_report(a: RunAnalysis, b: RunAnalysis, out: Path) -> Path:
    """compare_<b>.md, its PNGs and b's predictions (predictions_<b>.npz) in `out`."""
    from bacon_zoo.analysis import plots

    if a.num_classes != b.num_classes or not np.array_equal(a.arrays["labels"], b.arrays["labels"]):
        raise UserError(
            f"{a.run_dir} and {b.run_dir} were evaluated on different test sets; "
            "compare runs of the same data set and max_eval_samples"
        )
    tag = _slug(b.name if b.name != a.name else f"{b.run_dir.parent.name}_{b.name}")
    out.mkdir(parents=True, exist_ok=True)
    npz_b = f"predictions_{tag}.npz"
    save_predictions(b, out / npz_b)
    figures = plots.compare_figures(a, b, out, prefix=f"compare_{tag}")
    path = out / f"compare_{tag}.md"
    path.write_text(compare_markdown(a, b, figures, npz_b))
    return path


def analyze(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    compare: str | Path | None = None,
    out: str | Path | None = None,
    max_points: int = 2000,
    full_test: bool = False,
) -> list[Path]:
    """Everything `bacon-zoo analyze` writes; returns the pages (analysis.md, compare_*.md)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(
            f"'{run_dir}' is not a run directory (no config.yaml); give a train output dir"
        )
    out_dir = Path(out) if out is not None else run_dir / "analysis"
    a = analyze_run(run_dir, checkpoint, max_points, full_test)
    pages = [write_run_report(a, out_dir)]
    if compare is not None:
        b = analyze_run(Path(compare), None, max_points, full_test)
        pages.append(write_compare_report(a, b, out_dir))
    return pages
