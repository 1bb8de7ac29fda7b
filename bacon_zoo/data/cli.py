"""`bacon-zoo data`: show (and optionally save) the per-class table of a long-tailed split.

Same flags and recipes as `bacon-zoo train`, so the table is exactly the split a run would train on.
"""

from __future__ import annotations

import argparse
from typing import Any

from bacon_zoo.config import add_config_args, config_from_args, dumps

HELP = "print the per-class labeled/unlabeled table of a long-tailed split"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    add_config_args(parser)
    parser.add_argument(
        "--save-split", metavar="FILE", help="also write the split (indices + parameters) as JSON"
    )
    parser.set_defaults(func=run)
    return parser


def format_table(
    class_names: list[str],
    labeled: list[int],
    unlabeled: list[int],
    test: list[int],
    unknown: int = 0,
) -> str:
    """A plain-text table: one row per class, an `(unknown)` row for label -1 images, and totals."""
    rows = [("class", "name", "labeled", "unlabeled", "test")]
    for k, name in enumerate(class_names):
        rows.append((str(k), name, str(labeled[k]), str(unlabeled[k]), str(test[k])))
    if unknown:
        rows.append(("-1", "(unknown)", "0", str(unknown), "0"))
    rows.append(("", "total", str(sum(labeled)), str(sum(unlabeled) + unknown), str(sum(test))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0 or j == len(rows) - 2:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        print(dumps(cfg), end="")
        return 0
    from bacon_zoo.data import class_counts, prepare_data
    from bacon_zoo.fileio import check_writable_file

    if args.save_split:
        check_writable_file(args.save_split, "--save-split")
    data = prepare_data(cfg, decode=False)  # the table needs labels only
    split = data.split
    m1 = "all" if cfg.m1 is None else cfg.m1
    print(
        f"{data.source.name}: {data.num_classes} classes, {len(data.source.train)} train / "
        f"{len(data.test)} test images (fingerprint {data.source.fingerprint})"
    )
    print(
        f"split: n1={cfg.n1} m1={m1} imb_ratio_l={cfg.imb_ratio_l:g} imb_ratio_u={cfg.imb_ratio_u:g}"
        f"{' reversed' if cfg.reverse_u else ''}"
        f"{' (labeled included in unlabeled)' if cfg.include_labeled_in_unlabeled else ''} seed={cfg.seed}"
    )
    for what, origins in (
        ("labeled", split.labeled_origins),
        ("unlabeled", split.unlabeled_origins),
    ):
        if len(origins) > 1:  # a pooled source: say where the images came from
            print(f"{what}: " + " + ".join(f"{n} from '{s}'" for s, n in origins.items()))
    if data.source.held_out_per_class:
        print(
            f"test: {data.source.held_out_per_class} per class held out of the training pool "
            "(the data set has no test split; --test-per-class)"
        )
    test_counts = class_counts(data.test.labels, data.num_classes)
    print(
        format_table(
            data.class_names,
            split.labeled_counts,
            split.unlabeled_counts,
            test_counts,
            split.unlabeled_unknown,
        )
    )
    if args.save_split:
        split.to_json(args.save_split)
        print(f"saved the split to {args.save_split}")
    return 0
