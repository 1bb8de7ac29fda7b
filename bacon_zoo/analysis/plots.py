"""Every figure the package draws: analysis pages, model cards, study reports.

matplotlib's object API only (a `Figure` with its own `FigureCanvasAgg`): no pyplot, no global
backend, no state shared between figures, so plotting is safe in any process and thread. Functions
take plain data (lists, arrays, dicts) and return the written path; nothing here knows a run directory.
matplotlib is the `plots` extra: callers that treat figures as optional catch the ImportError of
importing this module.

One visual language: head / medium / tail classes (thirds by labeled count) are blue / green / red,
each class a shade of its group's colour (darkest = most labeled), circle / square / triangle markers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bacon_zoo.metrics import head_medium_tail

GROUPS = ("head", "medium", "tail")
GROUP_COLORS = {"head": "#1f5fa8", "medium": "#2a9d3c", "tail": "#d62728"}
GROUP_CMAPS = {"head": "Blues", "medium": "Greens", "tail": "Reds"}
GROUP_MARKERS = {"head": "o", "medium": "s", "tail": "^"}
DPI = 130
NEUTRAL = "#4C72B0"  # bars of classes without a known labeled count


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A Figure bound to its own Agg canvas (what pyplot would do, minus the global state)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def class_groups(labeled_counts: Sequence[int]) -> list[str]:
    """'head' / 'medium' / 'tail' for every class: the thirds by labeled count of the metrics."""
    out = [""] * len(labeled_counts)
    for name, idx in zip(GROUPS, head_medium_tail(labeled_counts)):
        for k in idx:
            out[k] = name
    return out


def class_colors(groups: Sequence[str], labeled_counts: Sequence[int]) -> list[tuple]:
    """One colour per class: a shade of its group's colour map, darker for more labeled images."""
    colors: list[tuple] = [(0, 0, 0, 1)] * len(groups)
    for g in GROUPS:
        members = sorted(
            (c for c in range(len(groups)) if groups[c] == g), key=lambda c: -labeled_counts[c]
        )
        shades = np.linspace(0.95, 0.5, len(members)) if len(members) > 1 else [0.8]
        for c, s in zip(members, shades):
            colors[c] = colormaps[GROUP_CMAPS[g]](float(s))
    return colors


def _group_legend(fig: Figure, **kw: Any) -> None:
    handles = [
        Line2D([], [], ls="", marker=GROUP_MARKERS[g], color=GROUP_COLORS[g], ms=7, label=g)
        for g in GROUPS
    ]
    fig.legend(handles=handles, title="classes", frameon=False, **kw)


def _save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _class_label(c: int, names: Sequence[str]) -> str:
    name = names[c] if c < len(names) else str(c)
    return name if name == str(c) else f"{c}:{name}"


# ---------------------------------------------------------------------------------------------
# t-SNE


def draw_embedding(
    ax: Any,
    xy: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    colors: Sequence[tuple],
    title: str,
) -> None:
    """Points coloured by class, shaped by group; each class's id at its median for K <= 20."""
    k = len(groups)
    size = 22 if len(xy) <= 500 else 9 if len(xy) <= 3000 else 4
    for c in range(k):
        m = labels == c
        if not m.any():
            continue
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=size,
            color=colors[c],
            marker=GROUP_MARKERS[groups[c]],
            alpha=0.85,
            linewidths=0,
        )
    if k <= 20:
        for c in range(k):
            m = labels == c
            if m.any():
                mx, my = np.median(xy[m], axis=0)
                ax.text(
                    mx,
                    my,
                    str(c),
                    fontsize=8,
                    weight="bold",
                    ha="center",
                    va="center",
                    color=GROUP_COLORS[groups[c]],
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
                )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_tsne_grid(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    groups: Sequence[str],
    labeled_counts: Sequence[int],
    ncols: int,
    suptitle: str,
    path: Path,
) -> Path:
    """A grid of (title, xy, labels) t-SNE panels sharing one colour code."""
    colors = class_colors(groups, labeled_counts)
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure((5.2 * ncols, 4.9 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, xy, labels) in zip(axes, panels):
        draw_embedding(ax, xy, labels, groups, colors, title)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(suptitle, fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    _group_legend(fig, loc="center right")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# confusion matrix, per-class accuracy


def plot_confusion(
    cm: np.ndarray, groups: Sequence[str], names: Sequence[str], title: str, path: Path
) -> Path:
    """Row-normalised confusion matrix; tick labels coloured by group."""
    k = len(cm)
    side = min(13.0, 3.5 + 0.42 * k)
    fig = new_figure((side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(cm, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's images")
    step = max(1, math.ceil(k / 40))
    ticks = np.arange(0, k, step)
    labels = [_class_label(c, names) for c in ticks]
    ax.set_xticks(ticks, labels, rotation=90 if k > 10 else 0, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    for tick_set in (ax.get_xticklabels(), ax.get_yticklabels()):
        for t, c in zip(tick_set, ticks):
            t.set_color(GROUP_COLORS[groups[c]])
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if cm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{cm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if cm[i, j] > 0.6 else "white",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (tick colour: head / medium / tail)")
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def plot_per_class(
    accs: Sequence[tuple[str, Sequence[float | None]]],
    labeled_counts: Sequence[int] | None,
    unlabeled_counts: Sequence[int] | None,
    names: Sequence[str],
    title: str | None,
    path: str | Path,
) -> Path:
    """Per-class accuracy bars (one bar per run) against the labeled / unlabeled counts (log axis).

    With labeled counts the classes are sorted by them and coloured by group; without (None, or not
    one per class) they keep their order in one neutral colour and no count line is drawn.
    """
    k = len(accs[0][1])
    counted = labeled_counts is not None and len(labeled_counts) == k
    groups = class_groups(labeled_counts) if counted else None
    order = sorted(range(k), key=lambda c: (-labeled_counts[c], c)) if counted else list(range(k))

    def color(c: int) -> str:
        return GROUP_COLORS[groups[c]] if groups else NEUTRAL

    x = np.arange(k)
    width = 0.8 / len(accs)
    fig = new_figure((min(16.0, 4.0 + 0.45 * k * len(accs) ** 0.5), 4.6))
    ax = fig.subplots()
    hatches = ("", "///", "..", "xx")
    for r, (_, acc) in enumerate(accs):
        vals = [np.nan if acc[c] is None else float(acc[c]) for c in order]
        ax.bar(
            x - 0.4 + width * (r + 0.5),
            vals,
            width * 0.95,
            color=[color(c) for c in order],
            alpha=1.0 if r == 0 else 0.45,
            hatch=hatches[r % len(hatches)],
            edgecolor="white" if r == 0 else "black",
            linewidth=0.3,
        )
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    step = max(1, math.ceil(k / 40))
    ax.set_xticks(
        x[::step],
        [_class_label(order[i], names) for i in x[::step]],
        rotation=90 if k > 12 else 0,
        fontsize=8,
    )
    for t, i in zip(ax.get_xticklabels(), x[::step]):
        t.set_color(color(order[i]))
    handles: list[Any] = [Patch(color=GROUP_COLORS[g], label=g) for g in GROUPS] if groups else []
    if len(accs) > 1:
        handles += [
            Patch(facecolor="0.5", alpha=1.0 if r == 0 else 0.45, hatch=hatches[r], label=n)
            for r, (n, _) in enumerate(accs)
        ]
    if counted:
        ax.set_xlabel("class (sorted by labeled count, largest first)")
        ax2 = ax.twinx()
        lab = np.array([labeled_counts[c] for c in order], dtype=float)
        has_unl = unlabeled_counts is not None and len(unlabeled_counts) == k
        unl = np.array([unlabeled_counts[c] for c in order] if has_unl else [0] * k, dtype=float)
        ax2.plot(x, np.where(lab > 0, lab, np.nan), "k-o", ms=3, lw=1.2)
        if unl.any():
            ax2.plot(x, np.where(unl > 0, unl, np.nan), ls="--", color="0.45", marker=".", lw=1)
        _log_count_axis(ax2)
        ax2.set_ylabel("training images per class (log scale)")
        handles += [Line2D([], [], color="k", marker="o", ms=3, label="labeled count")]
        if unl.any():
            handles += [Line2D([], [], color="0.45", ls="--", marker=".", label="unlabeled count")]
    else:
        ax.set_xlabel("class")
    if handles:
        ax.legend(
            handles=handles,
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=min(len(handles), 5),
            frameon=False,
        )
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_accuracy(
    per_class: Sequence[float | None],
    labeled_counts: Sequence[int] | None,
    unlabeled_counts: Sequence[int] | None,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """One run's per-class test accuracy (%, None = class absent from the test set) for model cards.

    Bars in group colours, sorted by labeled count, with the labeled and unlabeled counts per class
    on a log axis (counts that are None or not one per class are left out).
    """
    return plot_per_class(
        [("", per_class)], labeled_counts, unlabeled_counts, class_names, title, path
    )


def _log_count_axis(ax: Any) -> None:
    """Log scale labelled 1, 2, 5, 10, 20, 50, ... in plain numbers."""
    ax.set_yscale("log")

    def label(v: float, _pos: int) -> str:
        if v <= 0:
            return ""
        mantissa = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
        return f"{v:g}" if mantissa in (1, 2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))


# ---------------------------------------------------------------------------------------------
# training curves from metrics.jsonl


def _group_curve(history: list[dict], key: str, groups: Sequence[str], g: str):
    """(steps, mean over group g's classes of diagnostics[key]) where defined."""
    xs, ys = [], []
    for r in history:
        vals = (r.get("diagnostics") or {}).get(key)
        if not vals:
            continue
        sel = [v for v, gg in zip(vals, groups) if gg == g and v is not None]
        if sel:
            xs.append(r["step"])
            ys.append(float(np.mean(sel)))
    return xs, ys


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.axis("off")  # not set_xticks([]): the x axis is shared with the other panels


def plot_training_curves(
    history: list[dict], groups: Sequence[str], title: str, path: Path
) -> Path:
    """Test accuracy over steps, and when recorded: tail pseudo-label quality, drift, spread."""
    has_diag = any(isinstance(r.get("diagnostics"), dict) for r in history)
    fig = new_figure((12, 8) if has_diag else (6.5, 4.2))
    axes = fig.subplots(2, 2, sharex=True).ravel() if has_diag else [fig.subplots()]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    steps = [r["step"] for r in history]

    ax = axes[0]
    ax.plot(steps, [r.get("top1") for r in history], "k-", lw=2, label="top-1")
    ax.plot(
        steps,
        [r.get("balanced_acc") for r in history],
        color="#e69f00",
        lw=1.1,
        ls="--",
        label="balanced",
    )
    for g in GROUPS:
        ax.plot(steps, [r.get(g) for r in history], color=GROUP_COLORS[g], lw=1.2, label=g)
    ax.set_title("test accuracy (EMA model)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)

    if has_diag:
        ax = axes[1]
        drawn = False
        for g, lw in (("tail", 2.2), ("head", 1.0)):
            for key, ls, name in (
                ("pl_precision", "-", "precision"),
                ("pl_recall", "--", "recall"),
            ):
                xs, ys = _group_curve(history, key, groups, g)
                if xs:
                    ax.plot(
                        xs, ys, color=GROUP_COLORS[g], ls=ls, lw=lw, marker=".", label=f"{g} {name}"
                    )
                    drawn = True
        if drawn:
            ax.set_ylim(-2, 102)
            ax.set_title("pseudo-labels of the weak unlabeled views (tail vs head)", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("% (group mean over the eval window)")
            ax.legend(fontsize=8, frameon=False)
            ax.grid(alpha=0.3)
        else:
            _empty(ax, "no pseudo-labels with a known true label")

        for ax, key, name, log in (
            (axes[2], "center_drift", "class-center drift since previous eval (1 - cos)", True),
            (axes[3], "intra_spread", "intra-class spread of the feature bank (1 - cos)", False),
        ):
            curves = {g: _group_curve(history, key, groups, g) for g in GROUPS}
            if not any(xs for xs, _ in curves.values()):
                _empty(ax, "no memory bank in this run (BaCon only)")
                continue
            positive = all(y > 0 for _, ys in curves.values() for y in ys)
            for g, (xs, ys) in curves.items():
                if xs:
                    ax.plot(xs, ys, color=GROUP_COLORS[g], marker=GROUP_MARKERS[g], ms=4, label=g)
            if log and positive:
                ax.set_yscale("log")
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("group mean")
            ax.legend(fontsize=8, frameon=False)
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_bank_counts(
    diag: dict, step: int, groups: Sequence[str], names: Sequence[str], title: str, path: Path
) -> Path:
    """Label-bank n_k (labeled + unlabeled slots, stacked) against the true counts."""
    k = len(groups)
    x = np.arange(k)
    lab, unl = np.asarray(diag["bank_labeled"]), np.asarray(diag["bank_unlabeled"])
    true_l, true_u = np.asarray(diag["labeled_counts"]), np.asarray(diag["unlabeled_counts"])
    fig = new_figure((min(16.0, 4.0 + 0.5 * k), 4.4))
    ax = fig.subplots()
    colors = [GROUP_COLORS[g] for g in groups]
    ax.bar(x, lab, 0.7, color=colors, edgecolor="white", linewidth=0.3)
    ax.bar(x, unl, 0.7, bottom=lab, color=colors, alpha=0.4, edgecolor="white", linewidth=0.3)
    ax.scatter(x, true_l, marker="_", s=260, color="black", zorder=3)
    ax.scatter(
        x, true_l + true_u, marker="o", s=26, facecolors="none", edgecolors="black", zorder=3
    )
    step_t = max(1, math.ceil(k / 40))
    ax.set_xticks(
        x[::step_t],
        [_class_label(c, names) for c in x[::step_t]],
        rotation=90 if k > 12 else 0,
        fontsize=8,
    )
    ax.set_xlabel("class")
    ax.set_ylabel("label-bank entries n_k")
    handles = [
        Patch(color="0.3", label="bank: labeled slots"),
        Patch(color="0.3", alpha=0.4, label="bank: pseudo-labeled unlabeled slots"),
        Line2D([], [], ls="", marker="_", ms=14, color="k", label="true labeled count"),
        Line2D([], [], ls="", marker="o", mfc="none", color="k", label="true labeled + unlabeled"),
        *(Patch(color=GROUP_COLORS[g], label=g) for g in GROUPS),
    ]
    ax.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    ax.set_title(f"{title} (step {step})", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_metric_deltas(
    ma: dict, mb: dict, name_a: str, name_b: str, rows: Sequence[tuple[str, str]], path: Path
) -> Path:
    """Horizontal bars of a - b for each summary metric (percentage points)."""
    labels = [label for _, label in rows]
    deltas = [ma[key] - mb[key] for key, _ in rows]
    colors = [GROUP_COLORS.get(key, "0.35") for key, _ in rows]
    fig = new_figure((6.5, 0.45 * len(rows) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, deltas, color=colors, height=0.6)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    span = max([abs(d) for d in deltas if not math.isnan(d)] + [1.0])
    for yi, d in zip(y, deltas):
        if not math.isnan(d):
            ax.text(
                d + (0.02 * span if d >= 0 else -0.02 * span),
                yi,
                f"{d:+.2f}",
                va="center",
                ha="left" if d >= 0 else "right",
                fontsize=9,
            )
    ax.set_xlim(-1.3 * span, 1.3 * span)
    ax.set_xlabel(f"{name_a} - {name_b} (percentage points)")
    ax.set_title(f"metric deltas: {name_a} vs {name_b}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_compare_curves(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | Path
) -> Path:
    """top-1 / balanced and head / tail test accuracy over steps of (name, metrics history) runs;
    the first run solid, the others dashed / dotted."""
    fig = new_figure((11, 4))
    axes = fig.subplots(1, 2)
    styles = ("-", "--", ":", "-.")
    for r, (name, history) in enumerate(runs):
        ls = styles[r % len(styles)]
        steps = [h["step"] for h in history]
        axes[0].plot(
            steps, [h.get("top1") for h in history], "k", ls=ls, lw=2.4, label=f"{name} top-1"
        )
        axes[0].plot(  # thinner and on top: on a balanced test set it equals top-1
            steps,
            [h.get("balanced_acc") for h in history],
            color="#e69f00",
            lw=1.1,
            ls=ls,
            label=f"{name} balanced",
        )
        axes[1].plot(
            steps,
            [h.get("tail") for h in history],
            color=GROUP_COLORS["tail"],
            ls=ls,
            label=f"{name} tail",
        )
        axes[1].plot(
            steps,
            [h.get("head") for h in history],
            color=GROUP_COLORS["head"],
            ls=ls,
            lw=0.9,
            label=f"{name} head",
        )
    for ax, t in zip(axes, ("overall test accuracy", "head vs tail test accuracy")):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("%")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    names = [n for n, _ in runs]
    tail = f" vs {', '.join(names[1:])} (dashed)" if len(names) > 1 else ""
    fig.suptitle(f"training curves: {names[0]} (solid){tail}", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# study reports


def plot_study_bars(
    x_labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    errors: Mapping[str, Sequence[float]] | None = None,
    ylabel: str = "",
    title: str = "",
    legend_title: str | None = None,
) -> Path:
    """Grouped bars: one group per x label (may contain newlines), one bar per series (e.g. algorithm).

    `series[name][i]` is the bar of x_labels[i] (NaN: no bar); `errors[name][i]` its error half-length
    (e.g. the std over seeds; 0 or NaN: none). One series named "" draws no legend.
    """
    names = list(series)
    width = 0.8 / max(1, len(names))
    chars = max((len(line) for x in x_labels for line in x.split("\n")), default=1)
    per_group = max(0.45 * len(names) + 0.5, 0.085 * chars)
    fig = new_figure((max(6.0, 1.5 + len(x_labels) * per_group), 4.2))
    ax = fig.subplots()
    for j, name in enumerate(names):
        pos = [i - 0.4 + width * (j + 0.5) for i in range(len(x_labels))]
        errs = None
        if errors is not None and name in errors:
            errs = [0.0 if e is None or math.isnan(e) else float(e) for e in errors[name]]
            errs = errs if any(errs) else None
        means = [math.nan if v is None else float(v) for v in series[name]]
        ax.bar(pos, means, width, yerr=errs, capsize=3, color=f"C{j % 10}", label=name or None)
    rotate = len(x_labels) > 3 and any(len(x) > 12 and "\n" not in x for x in x_labels)
    ax.set_xticks(
        range(len(x_labels)),
        list(x_labels),
        rotation=30 if rotate else 0,
        ha="right" if rotate else "center",
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if any(names):
        ax.legend(title=legend_title, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path, dpi=120)


@dataclass(frozen=True)
class Curve:
    """One line of `plot_vs_imbalance`: y (+- err) at x; `color` an index into the colour cycle."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float] | None = None
    color: int | None = None
    dashed: bool = False


def plot_vs_imbalance(
    curves: Sequence[Curve],
    path: str | Path,
    xticks: Sequence[float] | None = None,
    xlabel: str = "labeled imbalance ratio",
    ylabel: str = "top-1 (best), %",
    title: str = "Top-1 against imbalance, mean ± std over seeds",
) -> Path:
    """Lines with error bars against the imbalance ratio on a log x axis (ticks at `xticks`)."""
    fig = new_figure((8.0, 4.2))
    ax = fig.subplots()
    for curve in curves:
        pts = sorted(zip(curve.x, curve.y, curve.err or [0.0] * len(curve.x)))
        ax.errorbar(
            [float(x) for x, _, _ in pts],
            [math.nan if y is None else float(y) for _, y, _ in pts],
            yerr=[0.0 if e is None or math.isnan(e) else float(e) for _, _, e in pts],
            color=None if curve.color is None else f"C{curve.color % 10}",
            linestyle="--" if curve.dashed else "-",
            marker="o",
            capsize=3,
            label=curve.label or None,
        )
    ax.set_xscale("log")
    if xticks:
        ticks = sorted({float(t) for t in xticks})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if any(c.label for c in curves):
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path, dpi=120)
