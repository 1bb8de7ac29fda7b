"""`bacon-zoo analyze`: what a trained run's feature space looks like, and how two runs differ.

One pass of the run's EMA model over its test set (the same split, the same evaluation subset, the
run's evaluation head) gives predictions, backbone features f(x) and projections g(f(x)); they are
saved to `predictions.npz` and every number of `analysis.md` is recomputed from that file, so the
page can always be checked against the arrays. t-SNE runs on L2-normalised vectors (the contrastive
loss compares directions) of a fixed subsample, and the separation number is the mean silhouette
with cosine distance on the same subsample.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bacon_zoo.analysis import plots
from bacon_zoo.config import fingerprint
from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write, atomic_write_text, writable_or_error
from bacon_zoo.metrics import classification_metrics
from bacon_zoo.run import CHECKPOINTS, SPLIT, RunDir
from bacon_zoo.run.checkpoint import check_same_run
from bacon_zoo.run.layout import (
    ANALYSIS_MANIFEST,
    ANALYSIS_PAGE,
    METRICS,
    PREDICTIONS,
    compare_page,
    compare_predictions,
    figure,
    step_of,
)
from bacon_zoo.run.manifest import read_manifest, write_manifest
from bacon_zoo.train.evaluate import evaluate

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


group_of = plots.class_groups  # 'head' / 'medium' / 'tail' per class, as the training metrics


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
# loading a run (everything about the run directory comes from RunDir)


def _require_analyzable(rd: RunDir) -> RunDir:
    """A one-line error now (not after minutes of work) when `rd` cannot be analysed."""
    rd.require()
    if not rd.split_path.is_file():
        raise UserError(f"{rd.path} has no {SPLIT}; analyze a run directory written by train")
    if not rd.checkpoints():
        raise UserError(
            f"{rd.path} has no complete checkpoint ({CHECKPOINTS}/step_N); train or resume it first"
        )
    rd.read_data()  # the data card must be readable
    return rd


def evaluate_with_features(
    model: torch.nn.Module,
    loader: Any,
    head: str,
    accelerator: Any,
    num_classes: int,
    labeled_counts: list[int],
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """The training evaluation (`bacon_zoo.train.evaluate.evaluate`, the one eval loop) with the
    backbone features and projections of every test image: labels, preds, probs, indices, feats, proj.
    """
    _, out = evaluate(
        model, loader, head, accelerator, num_classes, labeled_counts, channels_last, features=True
    )
    out = dict(out)
    out["feats"], out["proj"] = out.pop("features"), out.pop("projections")
    return out


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

    def spaces(self, spaces: tuple, other: RunAnalysis | None = None) -> list:
        """The (space, label) pairs that exist in this run (and `other`): no projection space for a
        net whose algorithm has none."""
        runs = (self,) if other is None else (self, other)
        return [(s, t) for s, t in spaces if all(r.arrays[s].shape[1] for r in runs)]

    def separation(self, space: str) -> dict[str, float]:
        """Silhouette per group of `space` ("feats" or "proj") on the t-SNE subsample."""
        idx = self.arrays["subsample"]
        return separation(self.arrays[space][idx], self.arrays["labels"][idx], self.groups)


def analyze_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    max_points: int = 2000,
    full_test: bool = False,
) -> RunAnalysis:
    """Rebuild the run's test set, run its EMA model over it, embed a subsample with t-SNE."""
    from accelerate import Accelerator

    from bacon_zoo.data import make_eval_loader, prepare_data

    rd = _require_analyzable(RunDir(run_dir))
    cfg = rd.read_config()
    if full_test:
        cfg.max_eval_samples = None
    card = rd.read_data()
    ckpt = rd.checkpoint(checkpoint)
    check_same_run(ckpt, fingerprint(cfg, ignore=("steps",)), rd.path)  # not another run's weights
    model, ckpt = rd.load_ema_model(ckpt)
    head = rd.eval_head()
    data = prepare_data(cfg, split_path=rd.split_path)
    if int(card["num_classes"]) != data.num_classes:
        raise UserError(
            f"{rd.data_path} says {card['num_classes']} classes but the data set has "
            f"{data.num_classes}; the data changed since training"
        )
    # the precision the run was evaluated in during training, so the numbers match metrics.jsonl
    used = rd.read_config_dict().get("precision") or (rd.read_summary() or {}).get("precision")
    accelerator = Accelerator(mixed_precision={"fp32": "no", None: "no"}.get(used, used))
    model = model.to(accelerator.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the normalisation and input size the run trained with (its data card)
    loader = make_eval_loader(
        data.test, cfg.eval_batch_size, card.get("mean", data.mean), card.get("std", data.std),
        device=accelerator.device, input_size=int(card.get("image_size", cfg.image_size)),
    )  # fmt: skip
    labeled_counts = [int(c) for c in card.get("labeled_counts", data.labeled_counts)]
    unlabeled_counts = [int(c) for c in card.get("unlabeled_counts", data.unlabeled_counts)]
    arrays = evaluate_with_features(
        model, loader, head, accelerator, data.num_classes, labeled_counts, cfg.channels_last
    )
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for key in ("labels", "preds", "indices"):
        arrays[key] = arrays[key].astype(np.int64)

    sub = subsample_indices(len(arrays["labels"]), max_points)
    arrays["subsample"] = sub
    arrays["tsne_feats"] = tsne_2d(arrays["feats"][sub])
    # a net without a projection (its algorithm has no BaCon term) has a [N, 0] projection space
    arrays["tsne_proj"] = (
        tsne_2d(arrays["proj"][sub]) if arrays["proj"].shape[1] else arrays["tsne_feats"][:, :0]
    )
    return RunAnalysis(
        run_dir=rd.path,
        name=rd.path.resolve().name,
        algorithm=cfg.algorithm,
        backbone=cfg.backbone,
        dataset=cfg.dataset,
        checkpoint=ckpt,
        step=step_of(ckpt),
        eval_head=head,
        class_names=[str(n) for n in card.get("class_names", data.class_names)],
        labeled_counts=labeled_counts,
        unlabeled_counts=unlabeled_counts,
        arrays=arrays,
        history=rd.read_metrics(),
    )


def save_predictions(a: RunAnalysis, path: Path) -> None:
    """predictions.npz: labels, preds, probs, feats, proj, indices, subsample, tsne_*, step, counts."""
    arrays = a.arrays | {
        "step": -1 if a.step is None else a.step,
        "labeled_counts": np.asarray(a.labeled_counts),
        "unlabeled_counts": np.asarray(a.unlabeled_counts),
        "class_names": np.asarray(a.class_names),
    }
    atomic_write(path, lambda f: np.savez(f, **arrays))


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
        f"## Training diagnostics ({METRICS}, evaluation at step {step})",
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
        f"from `{PREDICTIONS}` next to this page.",
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
    spaces = (("feats", "backbone feature f(x)"), ("proj", "projection g(f(x))"))
    for space, label in a.spaces(spaces):
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
        f"recomputed from `{PREDICTIONS}` and `{npz_b}`.",
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
    for space, label in a.spaces((("feats", "f(x)"), ("proj", "g(f(x))")), b):
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
# the figures (plain data in, `plots` draws)


def run_figures(a: RunAnalysis, out: Path) -> list[str]:
    """tsne.png, confusion.png, per_class.png, and curves.png / bank.png when metrics.jsonl allows."""
    m, groups, arr = a.metrics, a.groups, a.arrays
    where = f"{a.name}, step {a.step}, {a.eval_head} head"
    sub_labels = arr["labels"][arr["subsample"]]
    sep_f = a.separation("feats")
    panels = [
        (
            f"backbone feature f(x), {arr['feats'].shape[1]} dims (silhouette {sep_f['all']:.2f})",
            arr["tsne_feats"],
            sub_labels,
        ),
    ]
    if arr["proj"].shape[1]:
        sep_p = a.separation("proj")
        panels.append(
            (
                f"projection g(f(x)), {arr['proj'].shape[1]} dims (silhouette {sep_p['all']:.2f})",
                arr["tsne_proj"],
                sub_labels,
            )
        )
    headline = ", ".join(f"{label} {m[key]:.1f}" for key, label in METRIC_ROWS if key != "gmean")
    files = [
        plots.plot_tsne_grid(
            panels,
            groups,
            a.labeled_counts,
            2,
            f"t-SNE of {len(sub_labels)} test images: {where}",
            out / figure("tsne"),
        ),
        plots.plot_confusion(
            row_normalised_confusion(arr["preds"], arr["labels"], a.num_classes),
            groups,
            a.class_names,
            f"confusion matrix (row-normalised): {where}",
            out / figure("confusion"),
        ),
        plots.plot_per_class(
            [(a.name, m["per_class"])],
            a.labeled_counts,
            a.unlabeled_counts,
            a.class_names,
            f"per-class accuracy vs training counts: {headline}",
            out / figure("per_class"),
        ),
    ]
    if a.history:
        files.append(
            plots.plot_training_curves(
                a.history, groups, f"training curves: {a.name}", out / figure("curves")
            )
        )
    found = last_diagnostics(a.history)
    if found is not None and "bank_labeled" in found[1]:
        files.append(
            plots.plot_bank_counts(
                found[1],
                found[0],
                groups,
                a.class_names,
                f"label bank vs true counts: {a.name}",
                out / figure("bank"),
            )
        )
    return [f.name for f in files]


def compare_figures(a: RunAnalysis, b: RunAnalysis, out: Path, prefix: str) -> list[str]:
    """<prefix>_per_class.png, _tsne.png, _deltas.png and _curves.png (when both have histories)."""
    ma, mb = a.metrics, b.metrics
    sub_labels = a.arrays["labels"][a.arrays["subsample"]]
    panels = []
    for space, label in a.spaces((("feats", "f(x)"), ("proj", "g(f(x))")), b):
        for run in (a, b):
            s = run.separation(space)["all"]
            panels.append(
                (
                    f"{run.name}: {label} (silhouette {s:.2f})",
                    run.arrays[f"tsne_{space}"],
                    sub_labels,
                )
            )
    files = [
        plots.plot_per_class(
            [(a.name, ma["per_class"]), (b.name, mb["per_class"])],
            a.labeled_counts,
            a.unlabeled_counts,
            a.class_names,
            f"per-class accuracy: {a.name} (solid) vs {b.name} (hatched)",
            out / figure("per_class", prefix),
        ),
        plots.plot_tsne_grid(
            panels,
            a.groups,
            a.labeled_counts,
            2,
            f"t-SNE of the same {len(sub_labels)} test images: {a.name} (left) vs {b.name} (right)",
            out / figure("tsne", prefix),
        ),
        plots.plot_metric_deltas(
            ma, mb, a.name, b.name, METRIC_ROWS, out / figure("deltas", prefix)
        ),
    ]
    if a.history and b.history:
        files.append(
            plots.plot_compare_curves(
                [(a.name, a.history), (b.name, b.history)], out / figure("curves", prefix)
            )
        )
    return [f.name for f in files]


# ---------------------------------------------------------------------------------------------
# the command

MANIFEST = ANALYSIS_MANIFEST  # marks a folder as analyze's own: --out writes only into those


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "other"


def check_out_dir(out: Path) -> None:
    """Refuse an existing, non-empty folder that analyze did not write (it would overwrite files)."""
    writable_or_error(out, f"cannot write the analysis to {out}", "give --out a writable folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the analysis")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(
            f"--out {out} exists and was not written by `bacon-zoo analyze` (no {MANIFEST}); "
            "give a new or empty folder"
        )


def _record(out: Path, run: Path, written: list[str]) -> None:
    """Add `written` to the folder's manifest (what analyze wrote there, for the next --out check)."""
    try:
        old = list(read_manifest(out, MANIFEST).files)
    except (FileNotFoundError, ValueError):  # none yet, or an unreadable one: start it again
        old = []
    files = [f for f in {*old, *written} if (out / f).is_file()]
    write_manifest(out, MANIFEST, files, written_by="bacon-zoo analyze", run=str(run))


def write_run_report(a: RunAnalysis, out: Path) -> Path:
    """predictions.npz, the PNGs and analysis.md of one run in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    _record(out, a.run_dir, [])
    save_predictions(a, out / PREDICTIONS)
    figures = run_figures(a, out)
    path = out / ANALYSIS_PAGE
    atomic_write_text(path, analysis_markdown(a, figures))
    _record(out, a.run_dir, [PREDICTIONS, *figures, path.name])
    return path


def write_compare_report(a: RunAnalysis, b: RunAnalysis, out: Path) -> Path:
    """compare_<b>.md, its PNGs and b's predictions (predictions_<b>.npz) in `out`."""
    if a.num_classes != b.num_classes or not np.array_equal(a.arrays["labels"], b.arrays["labels"]):
        raise UserError(
            f"{a.run_dir} and {b.run_dir} were evaluated on different test sets; "
            "compare runs of the same data set and max_eval_samples"
        )
    tag = _slug(b.name if b.name != a.name else f"{b.run_dir.parent.name}_{b.name}")
    out.mkdir(parents=True, exist_ok=True)
    npz_b = compare_predictions(tag)
    save_predictions(b, out / npz_b)
    figures = compare_figures(a, b, out, prefix=f"compare_{tag}")
    path = out / compare_page(tag)
    atomic_write_text(path, compare_markdown(a, b, figures, npz_b))
    _record(out, a.run_dir, [npz_b, *figures, path.name])
    return path


def analyze(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    compare: str | Path | None = None,
    out: str | Path | None = None,
    max_points: int = 2000,
    full_test: bool = False,
) -> list[Path]:
    """Everything `bacon-zoo analyze` writes; returns the pages (analysis.md, compare_*.md).

    Every argument is checked before the first forward pass: a bad --compare or --out fails at once.
    """
    rd = _require_analyzable(RunDir(run_dir))
    rd.checkpoint(checkpoint)
    other = None
    if compare is not None:
        other = _require_analyzable(RunDir(compare))
        da, db = rd.read_data(), other.read_data()
        if (da.get("dataset"), da.get("num_classes")) != (db.get("dataset"), db.get("num_classes")):
            raise UserError(
                f"--compare {compare}: trained on {db.get('dataset')} ({db.get('num_classes')} "
                f"classes), {rd.path} on {da.get('dataset')} ({da.get('num_classes')}); "
                "compare runs of the same data set"
            )
    out_dir = Path(out) if out is not None else rd.analysis_dir
    check_out_dir(out_dir)
    a = analyze_run(rd.path, checkpoint, max_points, full_test)
    pages = [write_run_report(a, out_dir)]
    if other is not None:
        b = analyze_run(other.path, None, max_points, full_test)
        pages.append(write_compare_report(a, b, out_dir))
    return pages
