"""`bacon-zoo study run|report`: a grid of ordinary training runs, and the tables and plots over it."""

from __future__ import annotations

import argparse

RUN_EPILOG = """\
examples:
  bacon-zoo study run --recipe study_backbones --out studies/backbones
  bacon-zoo study run --recipe cpu_cifar10_lt --grid algorithm=fixmatch,abc,bacon \\
      --grid bacon.rns=true,false --seeds 0,1,2 --out studies/rns
  bacon-zoo study run --recipe study_backbones --out studies/bb \\
      --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --launcher "accelerate launch --num_processes 1"
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a grid of training runs (backbones x algorithms x seeds, ablations) and report it",
        description="A study is a grid over any config fields x seeds; every cell is an ordinary "
        "`bacon-zoo train --resume` run in STUDY_DIR/cells/<cell>, so a study can be stopped, "
        "restarted and split across machines.",
    )
    sub = parser.add_subparsers(dest="study_command", metavar="{run,report}", required=True)

    run = sub.add_parser(
        "run",
        help="run (or continue) every cell of a study",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--recipe", help="recipe (path or name in recipes/); may hold a `study:` block"
    )
    run.add_argument(
        "--base", help="train recipe the cells start from, replacing the recipe's own `base:`"
    )
    run.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an axis over any config field (dotted too; tie keys with +: imb_ratio_l+imb_ratio_u=100,150); "
        "replaces the recipe's axis of that name; variant=a,b picks the recipe's variants",
    )
    run.add_argument("--seeds", help="seeds to repeat every grid point with: 0,1,2 or 0-4")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting shared by every cell (not a grid axis)",
    )
    run.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="K=V,K=V",
        help="skip the cells matching all of these axis values (e.g. backbone=wrn28_2,pretrained=true)",
    )
    run.add_argument("--out", required=True, metavar="STUDY_DIR", help="the study directory")
    run.add_argument(
        "--shard", metavar="I/N", help="run only cells I, I+N, I+2N, ... (0-based; SLURM arrays)"
    )
    run.add_argument(
        "--launcher",
        metavar="CMD",
        help='run each cell as `CMD train.py ...` (e.g. "accelerate launch --multi_gpu --num_processes 4")',
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print each cell's status and command, run nothing"
    )
    run.add_argument(
        "--no-report", action="store_true", help="don't write the report when an unsharded run ends"
    )
    run.set_defaults(func=run_command)

    report = sub.add_parser("report", help="write results.csv, report.md and plots of a study")
    report.add_argument("study_dir", metavar="STUDY_DIR")
    report.set_defaults(func=report_command)


def run_command(args: argparse.Namespace) -> int:
    from bacon_zoo.study.grid import parse_exclude, parse_grid, parse_seeds, parse_shard
    from bacon_zoo.study.runner import plan_study, run_study

    shard = parse_shard(args.shard)
    study = plan_study(
        args.out,
        recipe=args.recipe,
        grid=parse_grid(args.grid),
        seeds=parse_seeds(args.seeds) if args.seeds else None,
        sets=args.set,
        exclude=[parse_exclude(e) for e in args.exclude],
        base=args.base,
    )
    outcome = run_study(study, shard, args.launcher, args.dry_run, log=_log)
    if args.dry_run:
        return 0
    if shard[1] == 1 and not args.no_report and not outcome["interrupted"]:
        from bacon_zoo.study.report import write_report

        _log(f"report: {write_report(study.dir)}")
    else:
        _log(f"report: bacon-zoo study report {study.dir}")
    if outcome["interrupted"] or outcome["pending"]:
        return 130
    return 1 if outcome["failed"] else 0


def report_command(args: argparse.Namespace) -> int:
    from bacon_zoo.study.report import write_report

    path = write_report(args.study_dir)
    print(path.read_text(), end="")
    print(f"\nwrote {path}, {path.parent / 'results.csv'} and plots")
    return 0


def _log(msg: str) -> None:
    print(msg, flush=True)
