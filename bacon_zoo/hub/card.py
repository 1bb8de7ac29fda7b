"""The model card (README.md of an export), built with huggingface_hub's `ModelCard` / `ModelCardData`.

Every number in a card is read from the export's own copies of the run's files (recipe.yaml, data.json,
summary.json, metrics.jsonl, bacon_net.json), never typed in, so a card can always be rebuilt from its
folder (`push` does that to put the real repo id in the usage snippets). A card says which training
protocol produced the run, the precision it really trained in, which loading path needs
`import bacon_zoo`, and, for BaCon, whether the contrastive term ever took part in training.

Contrastive-term counts come from each metrics.jsonl record's `diagnostics` (one evaluation window):
`con_steps` (steps in the window whose contrastive loss had at least one anchor), `con_anchors` (mean
anchors in the loss over those steps) and `con_centers` (mean valid class centers over those steps);
`center_valid` (per-class flags at the evaluation) is used when they are absent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bacon_zoo.data.presets import dataset_slug, dataset_title, preset_of
from bacon_zoo.errors import UserError
from bacon_zoo.hub.names import (
    needs_bacon_zoo,
    setting_string,
)
from bacon_zoo.run import LEGACY_PROTOCOL, PROTOCOL
from bacon_zoo.run.exportdir import ExportDir
from bacon_zoo.run.layout import (
    ANALYSIS,
    ANALYSIS_PAGE,
    NET_WEIGHTS,
    PLOT,
    RECIPE,
    SPLIT,
    TIMM_CONFIG,
)
from bacon_zoo.run.layout import METRICS as METRICS_FILE

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

# which code produced a run (config.yaml `protocol`; runs without the key predate it)
PROTOCOLS = {
    PROTOCOL: "the release's protocol: USB's WRN, the release's weight-decay groups, its "
    "RandAugment/Cutout strong view, SVHN train+extra, STL-10 unlabeled + labeled-train",
    LEGACY_PROTOCOL: "the earlier bacon-zoo network and protocol (a WRN that is not USB's, weight decay on every "
    "parameter, timm's RandAugment); numbers are not comparable with release-protocol runs",
}
# summary key -> (model-index metric type, readable name)
METRICS = {
    "top1": ("accuracy", "Top-1 accuracy"),
    "balanced_acc": ("balanced_accuracy", "Balanced accuracy"),
    "head": ("head_accuracy", "Head-class accuracy"),
    "medium": ("medium_accuracy", "Medium-class accuracy"),
    "tail": ("tail_accuracy", "Tail-class accuracy"),
}
# keys of the training protocol (docs/method.md, "Protocol of the paper"); the dataclass defaults are it
# (+ the run's algorithm sections, from the plug-in registry)
PROTOCOL_KEYS = (
    "steps", "batch_size", "mu", "lr", "lr_schedule", "warmup_steps", "momentum", "nesterov",
    "weight_decay", "weight_decay_all", "ema_decay", "image_size", "eval_every", "max_eval_samples",
    "pretrained", "include_labeled_in_unlabeled", "bn_momentum", "ema_warmup", "head_init",
    "opt", "input_size", "normalize", "layer_decay", "head_lr_scale", "pretrained_file", "lora_rank",
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
    "Normalisation: each data set's own mean/std (the release uses ImageNet's for CIFAR-10, a constant "
    "affine change of the input).",
    "The split, data order, views and ABC masks are drawn by bacon-zoo's seeded generators: the "
    "release's distributions, not its draws.",
    "The complete list, with what each difference can change: docs/differences.md in bacon-zoo.",
)


# ---------------------------------------------------------------------------------------------
# small formatters and data-set names


def _optimizer_text(recipe: dict) -> str:
    """`SGD lr 0.03 (constant, warm-up 0 steps), momentum 0.9 Nesterov, weight decay 0.0005`, or the
    timm optimizer's name with its layer decay and head learning-rate scale."""
    opt = str(recipe.get("opt") or "sgd")
    text = f"{'SGD' if opt == 'sgd' else opt} lr {_num(recipe.get('lr'))} ({recipe.get('lr_schedule')}, "
    text += f"warm-up {recipe.get('warmup_steps')} steps)"
    if opt == "sgd":
        text += f", momentum {_num(recipe.get('momentum'))}"
        text += " Nesterov" if recipe.get("nesterov") else ""
    text += f", weight decay {_num(recipe.get('weight_decay'))}"
    if recipe.get("layer_decay") is not None:
        text += f", layer decay {_num(recipe['layer_decay'])}"
    if recipe.get("head_lr_scale", 1.0) != 1.0:
        text += f", heads at {_num(recipe['head_lr_scale'])}x the rate"
    return text


def _input_text(recipe: dict, data: dict) -> str:
    """`32 px inputs`, or the data's size resized to the network's, with the normalisation used."""
    size, data_size = data.get("image_size", recipe.get("image_size")), data.get("data_image_size")
    text = (
        f"{data_size}-px images resized on the device to {size} px" if data_size else f"{size} px"
    )
    text += " inputs"
    if data.get("mean") is not None:
        mean = ", ".join(_num(round(m, 4)) for m in data["mean"])
        std = ", ".join(_num(round(s, 4)) for s in data["std"])
        text += f" normalised with mean ({mean}) / std ({std})"
    return text


def algorithm_info(algorithm: str | None) -> dict[str, Any]:
    """What the plug-in registry says about a run's algorithm (`describe`): base, imbalance method,
    BaCon term, summary, notes; a name it does not know is shown as written."""
    from bacon_zoo.algorithms import describe

    try:
        return describe(str(algorithm))
    except UserError:
        unknown = {"imbalance": "unknown", "contrastive": "unknown", "notes": [], "sections": []}
        return {"name": algorithm, "base": algorithm, "summary": algorithm, **unknown}


def head_text(head: str) -> str:
    """The evaluated head as its plug-in describes it ("the EMA model's ABC head h_a ...")."""
    from bacon_zoo.algorithms import head_description

    return f"the EMA model's {head_description(head)}"


def _num(x: Any) -> str:
    """100.0 -> '100', 0.5 -> '0.5' (settings, not measurements)."""
    return f"{x:g}" if isinstance(x, float) else ("none" if x is None else str(x))


def _pct(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _count(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else "n/a"


def dataset_hub_id(dataset: str) -> str | None:
    """The Hub data set behind a preset name or a Hub id; None for local folders and in-process data."""
    preset = preset_of(dataset)
    if preset is not None:
        return preset.hub_id
    if "/" in dataset and not Path(dataset).exists() and not dataset.startswith((".", "/", "~")):
        return dataset
    return None


def dataset_ref(dataset: str) -> str:
    """How a card names the data: its Hub id, else the preset's or the local folder's name (never a
    local path: it means nothing to a reader and leaks the trainer's file system)."""
    return dataset_hub_id(dataset) or dataset_slug(dataset)


def protocol_of(recipe: dict) -> str:
    return str(recipe.get("protocol") or LEGACY_PROTOCOL)


def precision_of(summary: dict) -> str:
    """The precision the run really trained in (summary `precision`, else accelerate's setting)."""
    return str(summary.get("precision") or summary.get("mixed_precision") or "n/a")


def eval_results(summary: dict, recipe: dict) -> list[EvalResult]:
    """model-index entries: best evaluation (the paper's convention) and last (the exported weights),
    on the test split (held out of train for a data set without one, such as digits)."""
    from huggingface_hub import EvalResult

    dataset = recipe["dataset"]
    preset = preset_of(dataset)
    common = dict(
        task_type="image-classification",
        task_name="Class-imbalanced semi-supervised image classification",
        dataset_type=dataset_ref(dataset),
        dataset_name=f"{dataset_title(dataset)}-LT ({setting_string(recipe)})",
        # the Hub's data-set config (SVHN's cropped_digits), not the long-tailed setting: that is
        # the card's `long_tail_setting` and its text
        dataset_config=getattr(preset, "config", None),
        dataset_split="test",
        dataset_revision=recipe.get("dataset_revision") or None,
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
# per-class plot and the contrastive term


def plot_per_class(
    path: Path,
    class_names: list[str],
    labeled_counts: list[int] | None,
    unlabeled_counts: list[int] | None,
    per_class: list[float | None],
    title: str,
) -> bool:
    """The card's per-class accuracy figure (bacon_zoo.analysis.plots); False without matplotlib."""
    try:
        from bacon_zoo.analysis.plots import plot_per_class_accuracy
    except ImportError:  # matplotlib is the `plots` extra
        return False
    plot_per_class_accuracy(
        per_class, labeled_counts or None, unlabeled_counts or None, class_names, path, title=title
    )
    return True


def contrastive_summary(recipe: dict, history: list[dict]) -> dict[str, Any] | None:
    """For a BaCon run: how many steps the contrastive term was scheduled, how many it really had
    anchors in its loss, with how many anchors and valid centers on average (None for other
    algorithms). `engaged` is True / False, or None when the run did not record the counts."""
    if "bacon" not in algorithm_info(recipe.get("algorithm"))["sections"]:
        return None
    b = recipe.get("bacon") or {}
    steps, start = int(recipe.get("steps") or 0), float(b.get("start", 0.5))
    # the term is on for steps t (0-based) with t > start * T
    scheduled = max(0, steps - (math.floor(start * steps) + 1))
    diags = [r.get("diagnostics") or {} for r in history]
    out: dict[str, Any] = {"start": start, "scheduled_steps": scheduled}
    windows = [d for d in diags if isinstance(d.get("con_steps"), int)]
    if windows:
        engaged = sum(d["con_steps"] for d in windows)

        def mean(key: str) -> float | None:
            pairs = [(d["con_steps"], d.get(key)) for d in windows if d["con_steps"]]
            pairs = [(n, v) for n, v in pairs if isinstance(v, (int, float))]
            return sum(n * v for n, v in pairs) / sum(n for n, _ in pairs) if pairs else None

        out |= {
            "engaged_steps": engaged,
            "anchors": mean("con_anchors"),
            "centers": mean("con_centers"),
            "engaged": engaged > 0,
        }
    else:
        out["engaged"] = False if scheduled == 0 else None
    valid = next((d["center_valid"] for d in reversed(diags) if "center_valid" in d), None)
    if isinstance(valid, list):
        out["valid_centers_last"] = sum(bool(v) for v in valid)
        out["num_classes"] = len(valid)
    return out


def _contrastive_lines(c: dict[str, Any]) -> list[str]:
    lines = [
        f"- Contrastive term scheduled for {c['scheduled_steps']:,} steps (from {_num(c['start'])} T)."
    ]
    if "engaged_steps" in c:
        lines.append(
            f"- It had anchors in its loss on {c['engaged_steps']:,} steps"
            + (
                f", with {c['anchors']:.1f} anchors and {c['centers']:.1f} valid class centers on "
                "average over those steps."
                if c.get("anchors") is not None and c.get("centers") is not None
                else "."
            )
        )
    else:
        lines.append(
            "- This run did not record how many steps the term had anchors (its "
            f"{METRICS_FILE} has no `con_steps` counts)."
        )
    if "valid_centers_last" in c:
        lines.append(
            f"- Valid class centers at the last evaluation: {c['valid_centers_last']} of "
            f"{c['num_classes']}."
        )
    return lines


def never_engaged_note(c: dict[str, Any] | None) -> str | None:
    """The warning a BaCon card opens with when its contrastive term never took part in training."""
    if not c or c.get("engaged") is not False:
        return None
    why = (
        "it was never scheduled within the run's steps"
        if c["scheduled_steps"] == 0
        else "no step had an anchor in its loss"
    )
    return (
        f"**Warning: BaCon's contrastive term never engaged in this run ({why}).** This checkpoint "
        "was trained as FixMatch + ABC; it is no evidence for or against BaCon."
    )


# ---------------------------------------------------------------------------------------------
# the card


def _protocol_diff(recipe: dict) -> list[str]:
    """`key: this run (release: value)` for every protocol setting this run changed."""
    from bacon_zoo.config import TrainConfig

    default = TrainConfig().to_dict()
    lines = []
    for key in (*PROTOCOL_KEYS, *algorithm_info(recipe.get("algorithm"))["sections"]):
        ours, ref = recipe.get(key), default.get(key)
        if isinstance(ref, dict):
            for sub, ref_v in ref.items():
                ours_v = (ours or {}).get(sub, ref_v)
                if ours_v != ref_v:
                    lines.append(f"`{key}.{sub}`: {_num(ours_v)} (release: {_num(ref_v)})")
        elif key in recipe and ours != ref:
            lines.append(f"`{key}`: {_num(ours)} (release: {_num(ref)})")
    return lines


def _runtime_diff(recipe: dict, summary: dict) -> list[str]:
    """The release trains in fp32 and with SyncBatchNorm across GPUs: say where this run did not."""
    lines = []
    precision = precision_of(summary)
    if precision not in ("fp32", "no", "n/a"):
        lines.append(f"precision {precision} (release: fp32)")
    procs = int(summary.get("num_processes") or 1)
    on_gpu = not str(summary.get("device") or "cpu").startswith("cpu")
    if procs > 1 and not (recipe.get("sync_bn") and on_gpu):
        lines.append(
            f"per-process BatchNorm over {procs} processes (release: SyncBatchNorm across GPUs)"
        )
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


def timm_data_args(recipe: dict | None) -> str:
    """The data arguments of timm's validate.py for a run's test set: a Hub data set timm's `hfds/`
    reader can open, else a folder of class sub-folders (`--data-dir`)."""
    dataset = (recipe or {}).get("dataset") or ""
    preset, hub = preset_of(dataset), dataset_hub_id(dataset)
    image = (recipe or {}).get("image_column") or getattr(preset, "image_column", None)
    label = (recipe or {}).get("label_column") or getattr(preset, "label_column", None)
    if hub and not getattr(preset, "config", None) and image and label:
        return f"--dataset hfds/{hub} --split test --input-key {image} --target-key {label}"
    return "--data-dir PATH/TO/IMAGES --split test   # <split>/<class>/<image>.png"


def timm_script_lines(architecture: str, repo: str, data_args: str) -> list[str]:
    """How to run timm's own validate.py / train.py on the checkpoint. timm has no plug-in hook, so
    for a bacon-zoo architecture `import bacon_zoo` must run first, in the same interpreter."""
    model = f"--model hf-hub:{repo} --pretrained"
    if needs_bacon_zoo(architecture):
        run = (
            "python -c \"import bacon_zoo, runpy, sys; sys.argv = ['validate.py', *sys.argv[1:]]; "
            "runpy.run_path('validate.py', run_name='__main__')\" \\"
        )
        intro = (
            "timm's own scripts, from a clone of pytorch-image-models: timm has no plug-in hook, so "
            "`import bacon_zoo` runs first (registering the architecture), then the script as "
            "`__main__` with its usual arguments (`train.py` the same way, for fine-tuning):"
        )
    else:
        run = "python validate.py \\"
        intro = (
            "timm's own scripts, from a clone of pytorch-image-models, load it as any timm model:"
        )
    return [intro, "", "```bash", run, f"    {model} {data_args}", "```", ""]


def loading_lines(architecture: str, repo: str, data_args: str | None = None) -> list[str]:
    """The card's "How to use" code, with or without `import bacon_zoo` as the architecture needs,
    and how to run timm's own scripts on it."""
    import bacon_zoo.models  # noqa: F401  (so the check sees the architectures bacon-zoo registers)

    needs = needs_bacon_zoo(architecture)
    why = (
        [
            f"`{architecture}` is a bacon-zoo architecture (the CIFAR WRNs and CIFAR-stem ResNets are "
            "not in timm itself): `import bacon_zoo` registers it in timm, then timm loads the "
            "checkpoint as usual.",
        ]
        if needs
        else [
            f"`{architecture}` is timm's own architecture (built with the `model_args` in "
            f"{TIMM_CONFIG}), so plain timm loads this checkpoint; bacon-zoo is not needed.",
        ]
    )
    return [
        *why,
        "",
        "```python",
        "import timm",
        *(
            ["import bacon_zoo  # registers bacon-zoo's small-image architectures in timm"]
            if needs
            else []
        ),
        "",
        f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
        "data_cfg = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**data_cfg, is_training=False)",
        'labels = model.pretrained_cfg["label_names"]',
        '# a local copy of this folder: timm.create_model("local-dir:path/to/folder", pretrained=True)',
        "```",
        "",
        "With bacon-zoo installed, `bacon_zoo.hub.load_pretrained(...)` also verifies the files and returns "
        "the data config; the command line:",
        "",
        "```bash",
        f"bacon-zoo predict hf-hub:{repo} cat.png dog.jpg --topk 3",
        f"bacon-zoo pull {repo}   # download (cached)",
        f"bacon-zoo train --recipe {RECIPE} --init-from hf-hub:{repo}   # continue training",
        "```",
        "",
        *timm_script_lines(architecture, repo, data_args or timm_data_args(None)),
    ]


def build_card(export_dir: str | Path, hub_id: str | None = None) -> ModelCard:
    """The `ModelCard` of an export folder; `hub_id` (ORG/NAME) fills the usage snippets."""
    from huggingface_hub import ModelCard, ModelCardData

    export_dir = Path(export_dir)
    export = ExportDir(export_dir)
    net = export.read_net()
    if net.get("imported"):
        return build_imported_card(export_dir, net, hub_id)
    f = export.read()
    recipe, data, summary, history = (f[k] for k in ("recipe", "data", "summary", "history"))
    name = net.get("name") or export_dir.name
    algorithm = recipe.get("algorithm", summary.get("algorithm", "bacon"))
    dataset = recipe["dataset"]
    head = net.get("eval_head", "abc")
    setting = setting_string(recipe)
    repo = hub_id or f"<org>/{name}"
    ds_hub = dataset_hub_id(dataset)
    revision = recipe.get("dataset_revision")
    revision_note = f", revision `{revision}`" if revision else ""
    base_model = net.get("base_model") if recipe.get("pretrained") else None
    step = net.get("step")
    row = next((r for r in reversed(history) if r.get("step") == step), None)
    procs = int(summary.get("num_processes") or 1)
    steps, batch, mu = int(recipe["steps"]), int(recipe["batch_size"]), int(recipe["mu"])
    protocol = protocol_of(recipe)
    arch = net.get("architecture", recipe.get("backbone"))
    con = contrastive_summary(recipe, history)
    info = algorithm_info(algorithm)
    warning = never_engaged_note(con)

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
            f"protocol-{protocol}",
        ],
        datasets=[ds_hub] if ds_hub else None,
        base_model=base_model,
        metrics=["accuracy"],
        model_name=hub_id or name,
        eval_results=eval_results(summary, recipe) or None,
        long_tail_setting=setting,
    )

    L: list[str] = [f"# {name}", ""]
    if warning:
        L += [warning, ""]
    if protocol != PROTOCOL:
        L += [f"**Produced by {PROTOCOLS.get(protocol, protocol)} (protocol `{protocol}`).**", ""]
    L += [
        f"A `{arch}` image classifier for "
        f"{data['num_classes']} classes, trained with **{info['summary']}** on a "
        f"long-tailed labeled/unlabeled split of {dataset_title(dataset)} (`{dataset_ref(dataset)}`, "
        f"{setting}{revision_note}) with "
        "bacon-zoo, a timm/accelerate model zoo for class-imbalanced semi-supervised learning.",
        "",
        f"The timm classifier in this repo is the EMA model at step {step} (checkpoint "
        f"`{net.get('checkpoint')}`) with {head_text(head)} as its classifier. "
        f"`{NET_WEIGHTS}` holds the full network (backbone and every head of its algorithm) "
        "for continued training.",
        "",
        f"Training protocol: `{protocol}` ({PROTOCOLS.get(protocol, 'unknown')}).",
    ]
    if summary.get("status") != "complete":
        L += [
            "",
            f"**Note:** the run was not complete when exported (status: {summary.get('status')}).",
        ]

    L += ["", "## Results", ""]
    L += [
        f"Test set of {data.get('num_test', 'n/a')} images, evaluated every "
        f"{recipe.get('eval_every')} steps with {head_text(head)}. The paper reports the best "
        "top-1 over training (first column, also the headline number in the metadata); "
        f"the weights in this repo are those of step {step}"
        + (" (the last evaluation)." if step == (summary.get("last") or {}).get("step") else "."),
        "",
        *_results_table(summary),
        "",
        "Head / medium / tail: classes ranked by labeled count and cut into thirds.",
        "",
    ]
    if export.plot.is_file():
        L += [f"![per-class test accuracy]({PLOT})", ""]
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
    if export.analysis_page.is_file():
        page = f"{ANALYSIS}/{ANALYSIS_PAGE}"
        L += [f"Further analysis of this run: [{page}]({page})"]
        L += [f"- [{p}]({ANALYSIS}/{p})" for p in export.analysis_figures()] + [""]

    L += ["## Long-tailed split", ""]
    L += [
        f"Setting `{setting}` (N1 / M1: labeled / unlabeled images of the largest class; gamma: "
        "imbalance ratios; `1/gamma`: reversed unlabeled profile). The exact split (image indices) is "
        f"in `{SPLIT}`.",
        "",
        *_split_table(data, row),
        "",
    ]

    L += ["## Training recipe and budget", ""]
    init = f"from timm's pretrained weights (`{base_model}`)" if base_model else "from scratch"
    if recipe.get("pretrained") and not base_model:
        init = "from the backbone's pretrained weights"
    if recipe.get("pretrained_file"):  # the file's own provenance and licence apply, not timm's
        init = f"from the local weights file `{Path(recipe['pretrained_file']).name}` (--pretrained-file)"
        from bacon_zoo.hub.import_weights import read_provenance

        prov = read_provenance(recipe["pretrained_file"])
        if prov:
            init += f": {prov.get('source')}, licence {prov.get('license')}"
    if recipe.get("lora_rank"):
        init += f", fine-tuned with LoRA rank {recipe['lora_rank']} (merged into these weights)"
    ips = summary.get("images_per_s")
    L += [
        f"- algorithm: `{algorithm}`; backbone `{recipe.get('backbone')}` "
        f"({_count(summary.get('params'))} parameters in the BaCon network), initialised {init}"
        + (f"; started from `{recipe['init_from']}`" if recipe.get("init_from") else ""),
        f"- {steps} steps x {batch} labeled + {mu * batch} unlabeled images per process "
        f"(mu = {mu}), {procs} process(es): {steps * batch * (1 + mu) * procs:,} images drawn "
        "(each unlabeled image in a weak and a strong view)",
        f"- {_optimizer_text(recipe)}, EMA {_num(recipe.get('ema_decay'))}",
        f"- {_input_text(recipe, data)}, trained in precision `{precision_of(summary)}`"
        + (f" on {summary['device']}" if summary.get("device") else "")
        + f", seed {recipe.get('seed')}"
        + (f", median throughput {ips:,.0f} images/s" if isinstance(ips, (int, float)) else ""),
    ]
    L.append(
        f"- base algorithm: {info['base']}; imbalance method: {info['imbalance']}; BaCon term: "
        f"{'yes' if 'bacon' in info['sections'] else 'no'}"
    )
    if "bacon" in info["sections"]:
        b = recipe.get("bacon") or {}
        L.append(
            f"- BaCon: projection d = {b.get('proj_dim')}, tau0 = {_num(b.get('tau0'))}, "
            f"eta = {_num(b.get('eta'))}, contrastive term from {_num(b.get('start'))} T, "
            f"RNS top-{b.get('topk')}, negative scale {_num(b.get('neg_scale'))}"
        )
    L += [
        "",
        f"The full config is `{RECIPE}` (`bacon-zoo train --recipe {RECIPE}` repeats the run).",
        "",
    ]
    if con is not None:
        L += ["## The contrastive term in this run", "", *_contrastive_lines(con), ""]

    L += ["## How to use", "", *loading_lines(arch, repo, timm_data_args(recipe))]

    L += ["## Differences from the released code", ""]
    L += [f"- {d}" for d in DIFFERENCES]
    if protocol != PROTOCOL:
        L += [f"- This run predates the release protocol: {PROTOCOLS.get(protocol, protocol)}."]
    L += [f"- {note}" for note in info["notes"]]
    if info["name"] == "fixmatch" and recipe.get("lr_schedule") == "constant":
        L += [
            "- This FixMatch baseline uses the release's BaCon protocol (constant learning rate); "
            "USB trains plain FixMatch with a cosine schedule (`--lr-schedule cosine`)."
        ]
    if "bacon" in info["sections"] or "bacon" in recipe:
        quirks = (recipe.get("bacon") or {}).get("official_quirks")
        L += [f"- This run: `bacon.official_quirks` is {'on' if quirks else 'off'}."]
    diff = _protocol_diff(recipe) + _runtime_diff(recipe, summary)
    L += [
        "- This run's settings that differ from the release's training protocol: "
        + ("; ".join(diff) if diff else "none")
        + ".",
        "",
    ]

    L += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(L)
    return ModelCard(content)


def build_imported_card(export_dir: Path, net: dict, hub_id: str | None = None) -> ModelCard:
    """The card of a checkpoint imported from USB / the BaCon release: where it came from, no claims."""
    from huggingface_hub import ModelCard, ModelCardData

    src = net["imported"]
    name = net.get("name") or export_dir.name
    arch = net.get("architecture", net.get("backbone"))
    repo = hub_id or f"<org>/{name}"
    heads = (
        "the release's wrapper (backbone, main head, ABC head, projection); the timm classifier "
        f"here is the ABC head, `{NET_WEIGHTS}` holds the full network"
        if net.get("eval_head") == "abc"
        else "a plain WRN; the timm classifier here is its classifier"
    )
    card_data = ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "bacon-zoo", "usb-import"],
        model_name=hub_id or name,
    )
    L = [
        f"# {name}",
        "",
        f"Imported with `bacon-zoo import-usb` from a USB / BaCon-release checkpoint: `{src['file']}` "
        f"(sha256 `{src['sha256']}`), state dict `{src['key']}`"
        + (f", iteration {src['it']}" if src.get("it") is not None else "")
        + ".",
        "",
        f"A `{arch}` with {net.get('num_classes')} classes; the checkpoint is {heads}.",
        "",
        "This card makes no accuracy claim: bacon-zoo did not train or evaluate this checkpoint, and "
        "the training data, split and protocol are whatever produced the source file. The timm "
        "classifier gives exactly the logits the source checkpoint gives in USB.",
        "",
        "## How to use",
        "",
        *loading_lines(arch, repo),
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(L))
