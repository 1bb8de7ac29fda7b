"""The model card (README.md of an export), built with huggingface_hub's `ModelCard` / `ModelCardData`.

Every number in a card is read from the export's own copies of the run's files (recipe.yaml, data.json,
summary.json, metrics.jsonl, bacon_net.json), never typed in, so a card can always be rebuilt from its
folder (`push` does that to put the real repo id in the usage snippets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.errors import UserError

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

ALGORITHMS = {
    "fixmatch": "FixMatch (confidence-thresholded pseudo-labels on strongly augmented views)",
    "abc": "FixMatch + ABC (an auxiliary class-balanced classifier)",
    "bacon": "BaCon: FixMatch + ABC + a balanced feature-level contrastive loss with class centers "
    "as positives, reliable negative selection and balanced temperatures",
}
HEADS = {
    "abc": "the EMA model's ABC head h_a (the head ABC and BaCon evaluate)",
    "main": "the EMA model's main head h (the head FixMatch evaluates)",
}
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10", "svhn": "SVHN"}
# summary key -> (model-index metric type, readable name)
METRICS = {
    "top1": ("accuracy", "Top-1 accuracy"),
    "balanced_acc": ("balanced_accuracy", "Balanced accuracy"),
    "head": ("head_accuracy", "Head-class accuracy"),
    "medium": ("medium_accuracy", "Medium-class accuracy"),
    "tail": ("tail_accuracy", "Tail-class accuracy"),
}
# keys of the training protocol (spec, "Training protocol of the release"); the dataclass defaults are it
PROTOCOL_KEYS = (
    "steps", "batch_size", "mu", "lr", "lr_schedule", "warmup_steps", "momentum", "nesterov",
    "weight_decay", "ema_decay", "image_size", "eval_every", "max_eval_samples", "pretrained",
    "include_labeled_in_unlabeled", "fixmatch", "abc", "bacon",
)  # fmt: skip
CITATION = """\
@inproceedings{feng2024bacon,
  title         = {BaCon: Boosting Imbalanced Semi-supervised Learning via Balanced Feature-Level Contrastive Learning},
  author        = {Feng, Qianhan and Xie, Lujing and Fang, Shijie and Lin, Tong},
  booktitle     = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year          = {2024},
  eprint        = {2403.12986},
  archivePrefix = {arXiv}
}"""
DIFFERENCES = (
    "The release's three quirks (label-bank test on raw logits, all-ones feature-bank init averaged "
    "into the centers, labeled bank writes only on some steps) are reproduced only behind "
    "`bacon.official_quirks`, default off.",
    "NaN guards: a class with no bank members (empty center) or no reliable negatives in the batch "
    "drops its anchors from the loss instead of turning it into NaN.",
    "ABC's Bernoulli annealing and BaCon's temperature schedule use t/T (steps) instead of "
    "epoch/epochs.",
    "Class centers are kept as per-class sums and counts, updated only for the slots a step "
    "changes: the same centers as recomputing from the whole bank, in O(batch x d).",
)


# ---------------------------------------------------------------------------------------------
# names and settings


def _num(x: Any) -> str:
    """100.0 -> '100', 0.5 -> '0.5' (settings, not measurements)."""
    return f"{x:g}" if isinstance(x, float) else ("none" if x is None else str(x))


def _pct(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _count(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else "n/a"


def setting_string(recipe: dict) -> str:
    """The long-tailed setting as one string, e.g. `N1=1000,M1=4000,gamma_l=100,gamma_u=100`."""
    m1 = recipe.get("m1")
    gu = _num(recipe.get("imb_ratio_u"))
    parts = [
        f"N1={recipe.get('n1')}",
        f"M1={'all' if m1 is None else m1}",
        f"gamma_l={_num(recipe.get('imb_ratio_l'))}",
        f"gamma_u={'1/' + gu if recipe.get('reverse_u') else gu}",
    ]
    if recipe.get("include_labeled_in_unlabeled"):
        parts.append("labeled_in_unlabeled")
    return ",".join(parts)


def dataset_hub_id(dataset: str) -> str | None:
    """The Hub data set behind a preset name or a Hub id; None for local folders and in-process data."""
    try:
        from bacon_zoo.data.sources import PRESETS
    except ImportError:  # the data module is optional for cards
        PRESETS = {}
    if dataset in PRESETS:
        return getattr(PRESETS[dataset], "hub_id", None)
    if "/" in dataset and not Path(dataset).exists() and not dataset.startswith((".", "/", "~")):
        return dataset
    return None


def dataset_title(dataset: str) -> str:
    from bacon_zoo.hub.export import dataset_slug

    slug = dataset_slug(dataset)
    return DATASET_TITLES.get(slug, slug)


def eval_results(summary: dict, recipe: dict, num_test: int | None) -> list[EvalResult]:
    """model-index entries: best evaluation (the paper's convention) and last (the exported weights)."""
    from huggingface_hub import EvalResult

    dataset = recipe["dataset"]
    common = dict(
        task_type="image-classification",
        task_name="Class-imbalanced semi-supervised image classification",
        dataset_type=dataset_hub_id(dataset) or dataset,
        dataset_name=f"{dataset_title(dataset)}-LT ({setting_string(recipe)})",
        dataset_config=setting_string(recipe),
        dataset_split="test" if num_test is None else f"test ({num_test} images)",
    )
    out = []
    for which in ("best", "last"):
        step = summary.get("best_step") if which == "best" else summary.get("last", {}).get("step")
        when = "best evaluation over training" if which == "best" else "last evaluation"
        for key, (mtype, mname) in METRICS.items():
            value = (summary.get(which) or {}).get(key)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                continue
            out.append(
                EvalResult(
                    **common,
                    metric_type=mtype,
                    metric_value=value,
                    metric_name=f"{mname} (%, {when}, step {step})",
                    metric_config=which,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# per-class plot


def plot_per_class(
    path: Path,
    class_names: Sequence[str],
    labeled_counts: Sequence[int],
    per_class: Sequence[float | None],
    title: str,
) -> bool:
    """Bar chart of per-class accuracy with the labeled count per class; False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    k = len(per_class)
    acc = [float("nan") if v is None else float(v) for v in per_class]
    fig = Figure(figsize=(min(16.0, max(6.0, 0.4 * k + 2.0)), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(k), acc, color="#4C72B0", label="test accuracy")
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    counts = list(labeled_counts) if len(labeled_counts) == k else None
    if k <= 30:  # class names with their labeled counts under the bars
        names = [str(c) for c in class_names][:k]
        ticks = [f"{n}\n({c})" for n, c in zip(names, counts)] if counts else names
        ax.set_xticks(range(k), ticks, rotation=45 if k > 10 else 0, fontsize=8)
        ax.set_xlabel("class (labeled images)" if counts else "class")
    else:  # too many names: the labeled count as a line on a second axis
        ax.set_xlabel("class index")
        if counts:
            ax2 = ax.twinx()
            ax2.plot(range(k), counts, "-", color="#DD8452", lw=1.5)
            ax2.set_ylabel("labeled images", color="#DD8452")
    ax.set_title(title, fontsize=9)
    bottom = 0.22 if k <= 10 else (0.3 if k <= 30 else 0.15)
    fig.subplots_adjust(left=0.1 if k <= 30 else 0.06, right=0.9, bottom=bottom, top=0.88)
    fig.savefig(path, dpi=110)
    return True


# ---------------------------------------------------------------------------------------------
# the card


def _load_export(export_dir: Path) -> dict[str, Any]:
    import yaml

    from bacon_zoo.hub.export import NET_CONFIG, read_json
    from bacon_zoo.fileio import read_jsonl as read_metrics

    fix = "it is not a complete bacon-zoo export; export the run again"
    recipe_path = export_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise UserError(f"{recipe_path} is missing; {fix}")
    return {
        "recipe": yaml.safe_load(recipe_path.read_text()) or {},
        "data": read_json(export_dir / "data.json", "the data description", fix),
        "summary": read_json(export_dir / "summary.json", "the run summary", fix),
        "net": read_json(export_dir / NET_CONFIG, "the BaconNet description", fix),
        "history": read_metrics(export_dir / "metrics.jsonl"),
    }


def _protocol_diff(recipe: dict) -> list[str]:
    """`key: this run (release: value)` for every protocol setting this run changed."""
    from bacon_zoo.config import TrainConfig

    default = TrainConfig().to_dict()
    lines = []
    for key in PROTOCOL_KEYS:
        ours, ref = recipe.get(key), default.get(key)
        if isinstance(ref, dict):
            for sub, ref_v in ref.items():
                ours_v = (ours or {}).get(sub, ref_v)
                if ours_v != ref_v:
                    lines.append(f"`{key}.{sub}`: {_num(ours_v)} (release: {_num(ref_v)})")
        elif key in recipe and ours != ref:
            lines.append(f"`{key}`: {_num(ours)} (release: {_num(ref)})")
    return lines


def _split_table(data: dict, row: dict | None) -> list[str]:
    names = data.get("class_names") or [str(i) for i in range(data["num_classes"])]
    lab, unl = data.get("labeled_counts") or [], data.get("unlabeled_counts") or []
    acc = (row or {}).get("per_class") or []
    head = "| class | labeled | unlabeled |" + (
        f" test acc. (%, step {row['step']}) |" if acc else ""
    )
    lines = [head, "|---|---:|---:|" + ("---:|" if acc else "")]
    for i, name in enumerate(names):
        cells = [
            str(name),
            str(lab[i]) if i < len(lab) else "",
            str(unl[i]) if i < len(unl) else "",
        ]
        if acc:
            cells.append(_pct(acc[i]) if i < len(acc) else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| **total** | {sum(lab)} | {sum(unl)} |" + (" |" if acc else ""))
    return lines


def _results_table(summary: dict) -> list[str]:
    best, last, med = (
        summary.get("best") or {},
        summary.get("last") or {},
        summary.get("median_last5"),
    )
    cols = [
        ("best evaluation (step {})".format(summary.get("best_step")), best),
        ("last evaluation (step {})".format(last.get("step")), last),
    ]
    if med:
        cols.append(("median of last 5", med))
    lines = ["| metric (%) | " + " | ".join(c for c, _ in cols) + " |"]
    lines.append("|---|" + "---:|" * len(cols))
    names = {**{k: v[1] for k, v in METRICS.items()}, "gmean": "Geometric mean of recalls"}
    for key in ("top1", "balanced_acc", "gmean", "head", "medium", "tail"):
        lines.append(f"| {names[key]} | " + " | ".join(_pct(d.get(key)) for _, d in cols) + " |")
    return lines


def build_card(export_dir: str | Path, hub_id: str | None = None) -> ModelCard:
    """The `ModelCard` of an export folder; `hub_id` (ORG/NAME) fills the usage snippets."""
    from huggingface_hub import ModelCard, ModelCardData

    export_dir = Path(export_dir)
    f = _load_export(export_dir)
    recipe, data, summary, net, history = (
        f[k] for k in ("recipe", "data", "summary", "net", "history")
    )
    name = net.get("name") or export_dir.name
    algorithm = recipe.get("algorithm", summary.get("algorithm", "bacon"))
    dataset = recipe["dataset"]
    head = net.get("eval_head", "abc")
    setting = setting_string(recipe)
    repo = hub_id or f"<org>/{name}"
    ds_hub = dataset_hub_id(dataset)
    base_model = net.get("base_model") if recipe.get("pretrained") else None
    step = net.get("step")
    row = next((r for r in reversed(history) if r.get("step") == step), None)
    procs = int(summary.get("num_processes") or 1)
    steps, batch, mu = int(recipe["steps"]), int(recipe["batch_size"]), int(recipe["mu"])

    card_data = ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=[
            "image-classification",
            "timm",
            "bacon-zoo",
            "semi-supervised-learning",
            "class-imbalance",
            algorithm,
        ],
        datasets=[ds_hub] if ds_hub else None,
        base_model=base_model,
        metrics=["accuracy"],
        model_name=hub_id or name,
        eval_results=eval_results(summary, recipe, data.get("num_test")) or None,
    )

    L: list[str] = [f"# {name}", ""]
    L += [
        f"A `{net.get('architecture', recipe.get('backbone'))}` image classifier for "
        f"{data['num_classes']} classes, trained with **{ALGORITHMS.get(algorithm, algorithm)}** on a "
        f"long-tailed labeled/unlabeled split of {dataset_title(dataset)} (`{dataset}`, {setting}) with "
        "bacon-zoo, a timm/accelerate model zoo for class-imbalanced semi-supervised learning.",
        "",
        f"The timm classifier in this repo is the EMA model at step {step} (checkpoint "
        f"`{net.get('checkpoint')}`) with {HEADS.get(head, head)} as its classifier. "
        "`bacon_net.safetensors` holds the full BaCon network (backbone, both heads, projection) "
        "for continued training.",
    ]
    if summary.get("status") != "complete":
        L += [
            "",
            f"**Note:** the run was not complete when exported (status: {summary.get('status')}).",
        ]

    L += ["", "## Results", ""]
    L += [
        f"Test set of {data.get('num_test', 'n/a')} images, evaluated every "
        f"{recipe.get('eval_every')} steps with {HEADS.get(head, head)}. The paper reports the best "
        "top-1 over training (first column, also the headline number in the metadata); "
        f"the weights in this repo are those of step {step}"
        + (" (the last evaluation)." if step == (summary.get("last") or {}).get("step") else "."),
        "",
        *_results_table(summary),
        "",
        "Head / medium / tail: classes ranked by labeled count and cut into thirds.",
        "",
    ]
    if (export_dir / "per_class_accuracy.png").is_file():
        L += ["![per-class test accuracy](per_class_accuracy.png)", ""]
    else:
        try:
            import matplotlib  # noqa: F401

            L += ["(No per-class accuracy plot: the run recorded no per-class metrics.)", ""]
        except ImportError:
            L += [
                "(Per-class plot skipped: matplotlib is not installed; "
                "`pip install 'bacon-zoo[plots]'` and export again.)",
                "",
            ]
    if (export_dir / "analysis" / "analysis.md").is_file():
        pngs = sorted(p.name for p in (export_dir / "analysis").glob("*.png"))
        L += ["Further analysis of this run: [analysis/analysis.md](analysis/analysis.md)"]
        L += [f"- [{p}](analysis/{p})" for p in pngs] + [""]

    L += ["## Long-tailed split", ""]
    L += [
        f"Setting `{setting}` (N1 / M1: labeled / unlabeled images of the largest class; gamma: "
        "imbalance ratios; `1/gamma`: reversed unlabeled profile). The exact split (image indices) is "
        "in `split.json`.",
        "",
        *_split_table(data, row),
        "",
    ]

    L += ["## Training recipe and budget", ""]
    init = f"from timm's pretrained weights (`{base_model}`)" if base_model else "from scratch"
    if recipe.get("pretrained") and not base_model:
        init = "from the backbone's pretrained weights"
    ips = summary.get("images_per_s")
    L += [
        f"- algorithm: `{algorithm}`; backbone `{recipe.get('backbone')}` "
        f"({_count(summary.get('params'))} parameters in the BaCon network), initialised {init}"
        + (f"; started from `{recipe['init_from']}`" if recipe.get("init_from") else ""),
        f"- {steps} steps x {batch} labeled + {mu * batch} unlabeled images per process "
        f"(mu = {mu}), {procs} process(es): {steps * batch * (1 + mu) * procs:,} images drawn "
        "(each unlabeled image in a weak and a strong view)",
        f"- SGD lr {_num(recipe.get('lr'))} ({recipe.get('lr_schedule')}, warm-up "
        f"{recipe.get('warmup_steps')} steps), momentum {_num(recipe.get('momentum'))}"
        f"{' Nesterov' if recipe.get('nesterov') else ''}, weight decay "
        f"{_num(recipe.get('weight_decay'))}, EMA {_num(recipe.get('ema_decay'))}",
        f"- {recipe.get('image_size')} px inputs, precision `{summary.get('mixed_precision', 'n/a')}`, "
        f"seed {recipe.get('seed')}"
        + (f", median throughput {ips:,.0f} images/s" if isinstance(ips, (int, float)) else ""),
    ]
    if algorithm == "bacon":
        b = recipe.get("bacon") or {}
        L.append(
            f"- BaCon: projection d = {b.get('proj_dim')}, tau0 = {_num(b.get('tau0'))}, "
            f"eta = {_num(b.get('eta'))}, contrastive term from {_num(b.get('start'))} T, "
            f"RNS top-{b.get('topk')}, negative scale {_num(b.get('neg_scale'))}"
        )
    L += [
        "",
        "The full config is `recipe.yaml` (`bacon-zoo train --recipe recipe.yaml` repeats the run).",
        "",
    ]

    L += ["## How to use", ""]
    L += [
        "```python",
        "import timm",
        "import bacon_zoo  # registers bacon-zoo's small-image architectures in timm",
        "",
        f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
        "data_cfg = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**data_cfg, is_training=False)",
        'labels = model.pretrained_cfg["label_names"]',
        "",
        "# or, with checks (corrupt files are refused) and the data config in one call:",
        f'model, data_cfg = bacon_zoo.load_pretrained("hf-hub:{repo}")',
        '# a local copy of this folder: "local-dir:path/to/folder"',
        "```",
        "",
        "```bash",
        f"bacon-zoo predict hf-hub:{repo} cat.png dog.jpg --topk 3",
        f"bacon-zoo pull {repo}   # download (cached)",
        f"bacon-zoo train --recipe recipe.yaml --init-from hf-hub:{repo}   # continue training",
        "```",
        "",
    ]

    L += ["## Differences from the released code", ""]
    L += [f"- {d}" for d in DIFFERENCES]
    quirks = (recipe.get("bacon") or {}).get("official_quirks")
    L += [f"- This run: `bacon.official_quirks` is {'on' if quirks else 'off'}."]
    diff = _protocol_diff(recipe)
    L += [
        "- This run's settings that differ from the release's training protocol: "
        + ("; ".join(diff) if diff else "none")
        + ".",
        "",
    ]

    L += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(L)
    return ModelCard(content)


def card_metrics(card_path: str | Path) -> dict[tuple[str, str], float]:
    """{(metric_config, summary key): value} from a card's model-index (for checks and the zoo)."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(card_path)
    by_type = {mtype: key for key, (mtype, _) in METRICS.items()}
    return {
        (r.metric_config, by_type[r.metric_type]): r.metric_value
        for r in card.data.eval_results or []
        if r.metric_type in by_type
    }
