"""`bacon-zoo analyze RUN_DIR`: t-SNE, confusion, per-class and training-curve pictures of a run."""

from __future__ import annotations

import argparse

from bacon_zoo.run.layout import ANALYSIS, ANALYSIS_PAGE, PREDICTIONS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="feature-space analysis of a run: t-SNE, confusion, per-class accuracy, training diagnostics",
        description=f"Runs the EMA model of RUN_DIR over its test set and writes {PREDICTIONS}, PNGs "
        f"and {ANALYSIS_PAGE} into RUN_DIR/{ANALYSIS} (or --out); --compare adds a side-by-side page.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `bacon-zoo train` output directory")
    parser.add_argument(
        "--checkpoint",
        metavar="CKPT",
        help="a step number or RUN_DIR/checkpoints/step_N (default: the latest checkpoint)",
    )
    parser.add_argument(
        "--compare", metavar="OTHER_RUN", help="a second run on the same data (e.g. ABC vs BaCon)"
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/analysis)")
    parser.add_argument(
        "--max-points",
        type=int,
        default=2000,
        metavar="N",
        help="test images in the t-SNE and silhouette subsample (default: 2000; 0 = all)",
    )
    parser.add_argument(
        "--full-test",
        action="store_true",
        help="use the whole test set even if the run evaluated on a subset (max_eval_samples)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bacon_zoo.errors import UserError

    if args.max_points < 0:
        raise UserError(f"--max-points must be >= 0 (0 = all), got {args.max_points}")
    try:
        from bacon_zoo.analysis.analyze import analyze
    except ImportError as e:  # matplotlib / scikit-learn are the `plots` extra
        raise UserError(
            f"bacon-zoo analyze needs the plots extra ({e}); pip install 'bacon-zoo[plots]'"
        ) from None

    pages = analyze(
        args.run_dir,
        checkpoint=args.checkpoint,
        compare=args.compare,
        out=args.out,
        max_points=args.max_points,
        full_test=args.full_test,
    )
    for page in pages:
        print(page)
    return 0
