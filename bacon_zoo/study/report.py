"""Gather a study's cells into `results.csv`, `report.md` and PNG plots.

Every number comes from a cell's `summary.json` (accuracies, params, images/s, processes, precision,
device, wall time, device-hours) or `config.yaml` (the budget); nothing is typed in, and the only numbers
that are not measured are the cost model's estimates for unfinished cells, labelled as estimates. Cells that failed or have not finished keep their row in
`results.csv` (with their status and error line) and are listed in the report, never silently dropped.
Aggregates are mean +- sample std over the complete seeds of a grid point; top-1 is the best over
training (the paper's convention) and balanced / head / medium / tail are those of that evaluation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from bacon_zoo.errors import UserError
from bacon_zoo.fileio import atomic_write_text
from bacon_zoo.run import CONFIG, SUMMARY, RunDir
from bacon_zoo.study.grid import VARIANT, axis_keys, format_value
from bacon_zoo.study.runner import cell_status, read_study, read_summary

METRICS = ("top1", "balanced_acc", "gmean", "head", "medium", "tail")
COLUMNS = [
    "status", "best_top1", "best_step", "best_balanced_acc", "best_gmean", "best_head",
    "best_medium", "best_tail", "last_top1", "last_balanced_acc", "last_tail", "median5_top1",
    "params", "images_per_s", "steps", "num_evals", "device", "mixed_precision", "num_processes",
    "wall_time_s", "device_hours", "est_device_hours", "cost_source", "error",
]  # fmt: skip
# Columns that measure time (differ between two runs of the same cells); everything else is reproducible.
TIMING_COLUMNS = ("images_per_s", "wall_time_s", "device_hours", "est_device_hours")


# ---------------------------------------------------------------------------------------------
# gathering


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        return RunDir(run_dir).read_config_dict()
    except UserError:
        return {}


def device_hours(summary: dict[str, Any]) -> float | None:
    """Measured device-hours of a finished cell (summary.json's, else wall time x processes)."""
    hours = summary.get("device_hours")
    if isinstance(hours, (int, float)):
        return float(hours)
    wall = summary.get("wall_time_s")
    if isinstance(wall, (int, float)):
        return float(wall) * float(summary.get("num_processes") or 1) / 3600.0
    return None


def gather(study_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(study.json, one row per cell in study order). Rows carry `_config` and `_summary` for the budget."""
    study = read_study(study_dir)
    rows = []
    for cell in study["cells"]:
        run_dir = study_dir / "cells" / cell["name"]
        status = cell_status(run_dir)
        summary = read_summary(run_dir) if status == "complete" else None
        row: dict[str, Any] = {"cell": cell["name"], **cell["values"], "seed": cell["seed"]}
        row["status"] = status
        if summary:
            best, last = summary.get("best", {}), summary.get("last", {})
            row |= {f"best_{k}": best.get(k) for k in METRICS if k != "top1"}
            row |= {
                "best_top1": summary.get("best_top1"),
                "best_step": summary.get("best_step"),
                "last_top1": last.get("top1"),
                "last_balanced_acc": last.get("balanced_acc"),
                "last_tail": last.get("tail"),
                "median5_top1": summary.get("median_last5", {}).get("top1"),
                "params": summary.get("params"),
                "images_per_s": summary.get("images_per_s"),
                "steps": summary.get("steps"),
                "num_evals": summary.get("num_evals"),
                "device": summary.get("device"),
                "mixed_precision": summary.get("mixed_precision"),
                "num_processes": summary.get("num_processes"),
                "wall_time_s": summary.get("wall_time_s"),
                "device_hours": device_hours(summary),
            }
        if status in ("failed", "cancelled"):
            row["error"] = RunDir(run_dir).status_line()
        row["_config"] = _read_config(run_dir)
        if summary:
            row |= _from_metrics(run_dir, summary.get("best_step"))
        row["_summary"] = summary or {}
        row.setdefault("steps", row["_config"].get("steps"))
        rows.append(row)
    add_estimates(study_dir, rows)
    return study, rows


def add_estimates(study_dir: Path, rows: list[dict[str, Any]]) -> None:
    """`est_device_hours` and `cost_source` per row: the cost model at the images/s this study measured
    for the backbone, else FLOP-scaled (see bacon_zoo.study.cost). For every cell, finished or not: what
    it would cost to run (again)."""
    from bacon_zoo.config import yaml_load
    from bacon_zoo.study.cost import estimate_cell, measured_throughput
    from bacon_zoo.study.grid import Cell
    from bacon_zoo.study.runner import cell_config

    measured = measured_throughput(
        {"backbone": r["_config"].get("backbone")}
        | r["_summary"]
        | {"image_size": r["_config"].get("image_size", 32)}
        for r in rows
        if r["_summary"]
    )
    try:
        shared = yaml_load((study_dir / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        shared = {}
    for row, cell in zip(rows, read_study(study_dir)["cells"]):
        try:
            cfg = cell_config(shared, Cell(**cell), study_dir / "cells" / cell["name"])
        except UserError:
            row["cost_source"] = "unknown"
            continue
        est = estimate_cell(cell["name"], cfg, measured)
        row["est_device_hours"] = est.device_hours
        row["cost_source"] = est.source


def write_csv(rows: list[dict[str, Any]], axes: list[str], path: Path) -> None:
    fields = ["cell", *axes, "seed", *COLUMNS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            out = {}
            for k in fields:
                v = row.get(k)
                if isinstance(v, float):
                    v = "nan" if math.isnan(v) else round(v, 4)
                elif isinstance(v, (bool, dict, list)) or v is None:
                    v = "" if v is None else format_value(v)
                out[k] = v
            writer.writerow(out)


# ---------------------------------------------------------------------------------------------
# numbers


def _num(v: Any, sep: bool = False) -> str:
    """100.0 -> "100"; with `sep`, 300000 -> "300,000"."""
    if isinstance(v, bool) or v is None:
        return format_value(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return (f"{v:,}" if sep else str(v)) if isinstance(v, int) else f"{v:g}"


def _distinct(values: list[str]) -> str:
    seen = list(dict.fromkeys(values))
    return "/".join(seen) if seen else "?"


def _size_text(cfg: dict[str, Any]) -> str:
    """`32 px`, or `32 px resized to 64` when the views are resized to the network's input size."""
    size, net = cfg["image_size"], cfg.get("input_size")
    return f"{size} px" + (f" resized to {net}" if net not in (None, size) else "")


def budget_line(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    """The first line of the report: what every number below was trained with."""
    cfgs = [(r["_config"], r["_summary"]) for r in rows if r["_config"]]
    if not cfgs:
        return f"**Budget:** unknown — no cell has started yet (no {CONFIG} under cells/)."

    def each(fn) -> str:
        return _distinct([fn(c, s) for c, s in cfgs])

    steps = each(lambda c, s: _num(c.get("steps"), sep=True))
    batch = each(
        lambda c, s: (
            f"{c['batch_size']} labeled + {c['batch_size'] * c['mu']} unlabeled (mu={c['mu']})"
        )
    )
    procs = _distinct([_num(s["num_processes"]) for _, s in cfgs if s.get("num_processes")])
    # what ran (summary.json) where a cell finished, else what was asked for (config.yaml)
    ran = [str(s["mixed_precision"]) for _, s in cfgs if s.get("mixed_precision")]
    asked = [str(c.get("mixed_precision") or "accelerate default") for c, _ in cfgs]
    precision = _distinct(ran or asked)
    data = each(
        lambda c, s: f"{c['dataset']} N1={_num(c['n1'])} M1={_num(c['m1']) if c['m1'] else 'all'}"
    )
    ratios = (
        f"gamma_l={each(lambda c, s: _num(c['imb_ratio_l']))} "
        f"gamma_u={each(lambda c, s: _num(c['imb_ratio_u']))} "
        + each(lambda c, s: "reversed" if c.get("reverse_u") else "consistent")
    )
    size = each(lambda c, s: _size_text(c))
    evals = each(
        lambda c, s: (
            f"eval every {_num(c['eval_every'], sep=True)} steps"
            + (f" on {c['max_eval_samples']} test images" if c.get("max_eval_samples") else "")
        )
    )
    procs_text = f"{procs} process(es)" if procs != "?" else "processes unknown (no cell finished)"
    return (
        f"**Budget:** {steps} steps × batch {batch} per process × {procs_text}, precision "
        f"{precision} · {data}, {ratios} · {size} · {evals} · seeds {', '.join(map(str, seeds))} "
        f"(read from the cells' {CONFIG} and {SUMMARY})"
    )


def _stats(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    n = len(vals)
    if not n:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def _pm(mean: float, std: float, n: int, signed: bool = False) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f}" if n > 1 and not math.isnan(std) else text


def grid_points(rows: list[dict], axes: dict[str, list]) -> list[dict[str, Any]]:
    """Rows grouped by grid point (all seeds), in the axes' declared order."""
    groups: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(format_value(row.get(a)) for a in axes)
        point = groups.setdefault(
            key, {"values": {a: row.get(a) for a in axes}, "rows": [], "complete": []}
        )
        point["rows"].append(row)
        if row["status"] == "complete":
            point["complete"].append(row)

    def order(point: dict) -> tuple:
        idx = []
        for a, values in axes.items():
            names = [format_value(v) for v in values]
            v = format_value(point["values"][a])
            idx.append(names.index(v) if v in names else len(names))
        return tuple(idx)

    points = sorted(groups.values(), key=order)
    for p in points:
        for col in ("best_top1", "best_balanced_acc", "best_head", "best_medium", "best_tail",
                    "last_top1", "params", "images_per_s"):  # fmt: skip
            p[col] = _stats([r.get(col) for r in p["complete"]])
    return points


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def points_table(points: list[dict], axes: dict[str, list]) -> list[str]:
    header = [*axes, "seeds", "top-1 (best)", "balanced", "head", "medium", "tail", "top-1 (last)"]
    lines = []
    for p in points:
        lines.append(
            [format_value(p["values"][a]) for a in axes]
            + [f"{len(p['complete'])}/{len(p['rows'])}"]
            + [
                _pm(*p[c])
                for c in (
                    "best_top1",
                    "best_balanced_acc",
                    "best_head",
                    "best_medium",
                    "best_tail",
                    "last_top1",
                )
            ]  # fmt: skip
        )
    return _table(header, lines)


def _with_bacon(algorithm: str) -> bool:
    """Does `algorithm` have BaCon's term (the plug-in registry says)?"""
    from bacon_zoo.algorithms import describe

    try:
        return "bacon" in describe(algorithm)["sections"]
    except UserError:
        return False


def _size(algorithm: str) -> int:
    from bacon_zoo.algorithms import components

    return len(components(algorithm))


def _short_title(algorithm: str) -> str:
    """ABC for fixmatch+abc, FixMatch for fixmatch, ACR for acr: the imbalance method, else the base."""
    from bacon_zoo.algorithms import describe

    info = describe(algorithm)
    return info["imbalance"] if info["imbalance"] != "none" else info["base"]


def gains_table(points: list[dict], axes: dict[str, list]) -> list[str]:
    """BaCon - each algorithm without BaCon's term (ABC, FixMatch, ...) per backbone (and any other
    axis), in points."""
    if "algorithm" not in axes or "backbone" not in axes:
        return []
    names = [str(a) for a in axes["algorithm"]]
    target = next((a for a in names if _with_bacon(a)), None)
    if target is None:
        return []
    others = [a for a in axes if a != "algorithm"]
    # the closest rival first: more plug-ins (FixMatch + ABC) before fewer (FixMatch)
    rivals = sorted((a for a in names if not _with_bacon(a)), key=lambda a: -_size(a))
    by_key: dict[tuple, dict[str, dict]] = {}
    for p in points:
        key = tuple(format_value(p["values"][a]) for a in others)
        by_key.setdefault(key, {})[str(p["values"]["algorithm"])] = p
    header = [*others, "params", "images/s", "BaCon top-1"] + [
        f"BaCon − {_short_title(r)}" for r in rivals
    ]
    lines = []
    for key, algos in by_key.items():
        bacon = algos.get(target)
        if bacon is None:
            continue
        params, ips = bacon["params"][0], bacon["images_per_s"][0]
        line = [*key, f"{params / 1e6:.2f}M" if not math.isnan(params) else "—"]
        line += [f"{ips:,.0f}" if not math.isnan(ips) else "—", _pm(*bacon["best_top1"])]
        for rival in rivals:
            other = algos.get(rival)
            if other is None:
                line.append("—")
                continue
            (mb, sb, nb), (mr, sr, nr) = bacon["best_top1"], other["best_top1"]
            n = min(nb, nr) if nb and nr else 0
            line.append(_pm(mb - mr, math.sqrt(sb**2 + sr**2) if n > 1 else math.nan, n, True))
        lines.append(line)
    return _table(header, lines)


def _hours(x: float | None) -> str:
    return f"{x:,.2f}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def cost_lines(rows: list[dict], axes: dict[str, list]) -> list[str]:
    """Device-hours per grid point: measured for finished cells, the cost model's ESTIMATE for the rest."""
    keys = [a for a in axes if a != "algorithm" or len(axes) == 1]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(format_value(r.get(a)) for a in keys), []).append(r)
    header = [*keys, "finished", "images/s (measured)", "device-hours (measured)",
              "device-hours (estimate, unfinished)", "device", "precision"]  # fmt: skip
    lines = []
    spent = left = again = 0.0
    n_left = 0
    for key, rs in groups.items():
        done = [r for r in rs if r["status"] == "complete"]
        measured = [r["device_hours"] for r in done if isinstance(r.get("device_hours"), float)]
        todo = [r.get("est_device_hours") for r in rs if r["status"] != "complete"]
        todo_h = sum(h for h in todo if isinstance(h, float) and math.isfinite(h))
        ips = _stats([r.get("images_per_s") for r in done])
        spent += sum(measured)
        left += todo_h
        n_left += len(todo)
        again += sum(
            r["est_device_hours"] for r in rs
            if isinstance(r.get("est_device_hours"), float) and math.isfinite(r["est_device_hours"])
        )  # fmt: skip
        lines.append(
            [*key, f"{len(done)}/{len(rs)}", f"{ips[0]:,.0f}" if ips[2] else "—",
             _hours(sum(measured)) if measured else "—", f"~{_hours(todo_h)}" if todo else "—",
             _distinct([str(r["device"]) for r in done if r.get("device")]) if done else "—",
             _distinct([str(r["mixed_precision"]) for r in done if r.get("mixed_precision")])
             if done else "—"]
        )  # fmt: skip
    n_done = sum(r["status"] == "complete" for r in rows)
    text = [
        f"**Spent:** {_hours(spent)} device-hours on {n_done} finished cells (measured: "
        f"{SUMMARY}'s `device_hours`, wall time x processes). "
        f"**Left:** ~{_hours(left)} device-hours for {n_left} unfinished cells (an ESTIMATE). "
        f"**The same study again:** ~{_hours(again)} device-hours (an ESTIMATE: the cost model at "
        "this study's measured images/s per backbone, FLOP-scaled for backbones it has not "
        "measured; `bacon-zoo study estimate` prices another grid).",
        "",
    ]
    return text + _table(header, lines)


# ---------------------------------------------------------------------------------------------
# plots


def _hue_axis(axes: dict[str, list]) -> str | None:
    return next((a for a in ("algorithm", VARIANT) if a in axes), None)


def _label(values: dict[str, Any], keys: list[str]) -> str:
    """A plot label: backbone names as they are, other axes as key=value (a tied axis by its first key)."""
    parts = [
        format_value(values[k])
        if k == "backbone"
        else f"{axis_keys(k)[0]}={format_value(values[k])}"
        for k in keys
    ]
    return "\n".join(parts) or "all"


def _mean_err(stats: tuple) -> tuple[float, float]:
    """(mean, error bar) of a grid point's (mean, std, n): no bar from a single seed."""
    return stats[0], stats[1] if stats[2] > 1 else 0.0


def plot_bars(
    points: list[dict], axes: dict[str, list], metric: str, ylabel: str, title: str, path: Path
) -> None:
    """Grouped bars: one group per grid point of the non-hue axes, one bar per algorithm/variant."""
    from bacon_zoo.analysis.plots import plot_study_bars

    hue = _hue_axis(axes)
    xkeys = [a for a in axes if a != hue and len(axes[a]) > 1]  # a one-value axis labels nothing
    hues = [format_value(v) for v in axes[hue]] if hue else [""]
    xs: list[str] = []
    table: dict[tuple[str, str], tuple] = {}
    for p in points:
        x = _label(p["values"], xkeys)
        if x not in xs:
            xs.append(x)
        table[(x, format_value(p["values"][hue]) if hue else "")] = p[metric]
    bars = {h: [_mean_err(table.get((x, h), (math.nan, math.nan, 0))) for x in xs] for h in hues}
    plot_study_bars(
        xs,
        {h: [m for m, _ in b] for h, b in bars.items()},
        path,
        errors={h: [e for _, e in b] for h, b in bars.items()},
        ylabel=ylabel,
        title=title,
        legend_title=hue,
    )


def plot_imbalance(points: list[dict], axes: dict[str, list], path: Path) -> bool:
    """Top-1 against the labeled imbalance ratio; consistent solid, reversed dashed."""
    ratio = next((a for a in axes if "imb_ratio_l" in axis_keys(a)), None)
    if ratio is None:
        return False
    from bacon_zoo.analysis.plots import Curve, plot_vs_imbalance

    hue = _hue_axis(axes)
    rest = [a for a in axes if a not in (ratio, hue) and len(axes[a]) > 1]
    lines: dict[tuple[str, str, bool], list[tuple[float, tuple]]] = {}
    for p in points:
        v = p["values"]
        key = (
            format_value(v[hue]) if hue else "",
            _label(v, [a for a in rest if a != "reverse_u"]).replace("\n", ", "),
            bool(v.get("reverse_u")) if "reverse_u" in axes else False,
        )
        lines.setdefault(key, []).append((float(v[ratio]), p["best_top1"]))
    hues = [format_value(h) for h in axes[hue]] if hue else [""]
    curves = []
    for (h, other, reverse), pts in lines.items():
        label = ", ".join(
            s for s in (h, other if other != "all" else "", "reversed" if reverse else "") if s
        )
        if "reverse_u" in axes and not reverse:
            label += ", consistent"
        bars = [_mean_err(stats) for _, stats in pts]
        curves.append(
            Curve(
                label.strip(", "),
                x=[x for x, _ in pts],
                y=[m for m, _ in bars],
                err=[e for _, e in bars],
                color=hues.index(h) if h in hues else None,
                dashed=reverse,
            )
        )
    plot_vs_imbalance(curves, path, xticks=axes[ratio], xlabel=f"labeled imbalance ratio ({ratio})")
    return True


def make_plots(points: list[dict], axes: dict[str, list], out: Path) -> list[str]:
    """The PNGs written (names relative to `out`); none when matplotlib is missing or nothing is done."""
    if not any(p["complete"] for p in points):
        return []
    try:
        import bacon_zoo.analysis.plots  # noqa: F401  (the `plots` extra: matplotlib)
    except ImportError:
        return []
    note = "mean ± std over seeds"
    plot_bars(points, axes, "best_top1", "top-1 (best), %", f"Top-1, {note}", out / "top1.png")
    plot_bars(
        points, axes, "best_tail", "tail accuracy, %", f"Tail classes at best top-1, {note}",
        out / "tail.png",
    )  # fmt: skip
    written = ["top1.png", "tail.png"]
    if plot_imbalance(points, axes, out / "top1_vs_imbalance.png"):
        written.append("top1_vs_imbalance.png")
    return written


# ---------------------------------------------------------------------------------------------
# the report


def write_report(study_dir: str | Path) -> Path:
    """Write results.csv, report.md and the plots into the study dir; returns report.md's path."""
    study_dir = Path(study_dir)
    study, rows = gather(study_dir)
    axes = {k: list(v) for k, v in study["grid"].items()}
    write_csv(rows, list(axes), study_dir / "results.csv")
    points = grid_points(rows, axes)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1

    title = Path(study["recipe"]).stem if study.get("recipe") else study_dir.name
    grid_text = "; ".join(f"{a} ∈ {{{', '.join(map(format_value, v))}}}" for a, v in axes.items())
    md = [budget_line(rows, study["seeds"]), "", f"# Study: {title}", ""]
    md.append(
        f"Grid: {grid_text or '(no axes)'}; seeds {', '.join(map(str, study['seeds']))} → "
        f"{len(rows)} cells ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}). "
        f"Recipe `{study.get('recipe') or '(defaults)'}`"
        + (f", base `{study['base']}`" if study.get("base") else "")
        + (f", `--set {' '.join(study['sets'])}`" if study.get("sets") else "")
        + "; shared settings in `recipe.yaml`."
    )
    if study.get("variants"):
        md += ["", "Variants:"] + [
            f"- `{name}`: {', '.join(f'{k}={format_value(v)}' for k, v in bundle.items())}"
            for name, bundle in study["variants"].items()
        ]
    if study.get("exclude"):
        md += ["", "Excluded: " + "; ".join(
            ", ".join(f"{k}={format_value(v)}" for k, v in e.items()) for e in study["exclude"]
        )]  # fmt: skip
    md += [
        "",
        "## Accuracy per grid point",
        "",
        "Mean ± sample std over the complete seeds (`seeds`: complete / all). Top-1 is the best over "
        "training (the paper's convention); balanced, head, medium and tail are from that same "
        "evaluation; last is the final evaluation. All in %.",
        "",
        *points_table(points, axes),
    ]
    # a study over variants compares cells by what they trained (their config's backbone / algorithm)
    gain_rows, gain_axes = (
        (rows, axes) if {"algorithm", "backbone"} <= set(axes) else config_axes(rows)
    )
    gains = gains_table(grid_points(gain_rows, gain_axes), gain_axes)
    if gains:
        md += [
            "",
            "## BaCon's gain per backbone",
            "",
            "Difference of mean best top-1 in points; ± is sqrt(std_a² + std_b²) (shown when both "
            "sides have 2+ seeds). Params and training images/s (median over a run, all processes) "
            "are the BaCon cells' means.",
            "",
            *gains,
        ]
    per_class = per_class_table(points, axes)
    if per_class:
        md += [
            "",
            "## Per class",
            "",
            "Accuracy per class at each cell's best evaluation, mean over the complete seeds, in %; "
            "classes from head to tail (labeled images per class in brackets).",
            "",
            *per_class,
        ]
    term = bacon_term_table(rows, axes)
    if term:
        md += [
            "",
            "## BaCon's contrastive term",
            "",
            "How much L_con worked in each cell with BaCon's term, from the diagnostics of every "
            "evaluation window: the steps on which it had at least one anchor (of the steps after "
            "`bacon.start`), and the mean anchors and valid class centres on those steps.",
            "",
            *term,
        ]
    md += ["", "## Cost", "", *cost_lines(rows, axes)]
    plots = make_plots(points, axes, study_dir)
    if plots:
        md += ["", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots]
    md += ["", "## Missing / failed cells", ""]
    bad = [r for r in rows if r["status"] != "complete"]
    for r in bad:
        why = f": {r['error']}" if r.get("error") else ""
        md.append(f"- `{r['cell']}` — {r['status']}{why}")
    known = {r["cell"] for r in rows}
    extra = sorted(
        p.name for p in (study_dir / "cells").glob("*") if p.is_dir() and p.name not in known
    )
    md += [f"- `{name}` — not in study.json (an earlier grid?), ignored" for name in extra]
    if not bad and not extra:
        md.append("None: every cell is complete.")
    md += [
        "",
        "Every number above is computed from `results.csv` (one row per cell, copied from "
        f"`cells/<cell>/{SUMMARY}`); the budget line from the cells' `{CONFIG}` and `{SUMMARY}`.",
    ]
    path = study_dir / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# per class and BaCon's term (from each complete cell's metrics.jsonl and data.json)


def _from_metrics(run_dir: Path, best_step: int | None) -> dict[str, Any]:
    """The per-class accuracy of the best evaluation, the class names and labeled counts, and the
    contrastive term's totals over every evaluation window."""
    run = RunDir(run_dir)
    records = run.read_metrics()
    best = next((r for r in records if r.get("step") == best_step), records[-1] if records else {})
    data = run.read_data() if run.data_path.is_file() else {}
    steps = sum(int(r.get("diagnostics", {}).get("con_steps") or 0) for r in records)
    # an algorithm with BaCon's term logs con_* diagnostics (train/diagnostics.py), others do not
    has_term = any("con_steps" in r.get("diagnostics", {}) for r in records)

    def mean_of(key: str) -> float | None:
        pairs = [
            (int(d.get("con_steps") or 0), d.get(key))
            for d in (r.get("diagnostics", {}) for r in records)
        ]
        pairs = [(n, v) for n, v in pairs if n and v is not None]
        return sum(n * v for n, v in pairs) / sum(n for n, _ in pairs) if pairs else None

    return {
        "_per_class": best.get("per_class"),
        "_class_names": data.get("class_names"),
        "_labeled_counts": data.get("labeled_counts"),
        "_has_term": has_term,
        "con_steps": steps,
        "con_anchors": mean_of("con_anchors"),
        "con_centers": mean_of("con_centers"),
    }


def config_axes(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """The rows with `backbone` and `algorithm` read from each cell's config, and those two axes."""
    axes: dict[str, list] = {"backbone": [], "algorithm": []}
    out = []
    for row in rows:
        row = dict(row) | {a: row["_config"].get(a) for a in axes}
        for a in axes:
            if row[a] is not None and row[a] not in axes[a]:
                axes[a].append(row[a])
        out.append(row)
    return out, axes


def per_class_table(points: list[dict], axes: dict[str, list]) -> list[str]:
    """Grid points x classes (head to tail), mean per-class accuracy at the best evaluation."""
    rows = [r for p in points for r in p["complete"] if r.get("_per_class")]
    if not rows:
        return []
    names, counts = rows[0].get("_class_names"), rows[0].get("_labeled_counts")
    k = len(rows[0]["_per_class"])
    names = names if names and len(names) == k else [str(i) for i in range(k)]
    order = sorted(range(k), key=lambda c: -(counts[c] if counts and len(counts) == k else 0))
    header = [*axes, "seeds"] + [
        f"{names[c]} ({counts[c]})" if counts and len(counts) == k else names[c] for c in order
    ]
    lines = []
    for p in points:
        have = [r["_per_class"] for r in p["complete"] if r.get("_per_class")]
        if not have:
            continue
        means = [sum(pc[c] for pc in have) / len(have) for c in order]
        lines.append(
            [format_value(p["values"][a]) for a in axes]
            + [str(len(have))]
            + [f"{m:.1f}" for m in means]
        )
    return _table(header, lines)


def bacon_term_table(rows: list[dict[str, Any]], axes: dict[str, list]) -> list[str]:
    """One line per complete cell with BaCon's term (it logged con_* diagnostics): engaged steps,
    anchors, valid centres."""
    lines = []
    for r in rows:
        cfg = r["_config"]
        if r["status"] != "complete" or not r.get("_has_term"):
            continue
        steps = int(r.get("steps") or cfg.get("steps") or 0)
        start = float((cfg.get("bacon") or {}).get("start", 0.5))
        after = steps - int(start * steps)
        anchors, centers = r.get("con_anchors"), r.get("con_centers")
        lines.append(
            [format_value(r.get(a)) for a in axes]
            + [str(r["seed"]), f"{r.get('con_steps', 0)} / {after}"]
            + [f"{x:.1f}" if isinstance(x, (int, float)) else "—" for x in (anchors, centers)]
        )
    header = [*axes, "seed", "steps with L_con / after start", "anchors", "valid centres"]
    return _table(header, lines) if lines else []


__all__ = [
    "TIMING_COLUMNS",
    "budget_line",
    "cost_lines",
    "device_hours",
    "gather",
    "grid_points",
    "make_plots",
    "write_csv",
    "write_report",
]
