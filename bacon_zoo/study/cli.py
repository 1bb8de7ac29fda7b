"""`bacon-zoo study run|report|estimate`: a grid of ordinary training runs, its tables, plots and cost."""

from __future__ import annotations

import argparse
import signal

RUN_EPILOG = """\
examples:
  bacon-zoo study run --recipe study_backbones --out studies/backbones
  bacon-zoo study run --recipe cpu_cifar10_lt --grid algorithm=fixmatch,abc,bacon \\
      --grid bacon.rns=true,false --seeds 0,1,2 --out studies/rns
  # one 8-GPU node: 8 cells at once, one per GPU
  bacon-zoo study run --recipe study_backbones --out studies/bb --devices 0,1,2,3,4,5,6,7
  # a SLURM job array through submitit: one GPU per cell, requeued (and resumed) on preemption/timeout
  bacon-zoo study run --recipe study_backbones --out studies/bb --executor slurm --partition gpu \\
      --gpus-per-cell 1 --timeout-min 2880 --slurm-array-parallelism 32
  # a CPU-only partition: --gpus-per-cell defaults to 0 there (docs/clusters.md)
  bacon-zoo study run --recipe demo_digits --out studies/cpu --executor slurm --partition debug --wait
  # shards balanced by estimated cost (e.g. one per machine), or exactly one cell
  bacon-zoo study run --recipe study_backbones --out studies/bb --shard 0/4
  bacon-zoo study run --recipe study_backbones --out studies/bb --cell NAME
"""


def _add_plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe", help="recipe (path or name in recipes/); may hold a `study:` block"
    )
    parser.add_argument(
        "--base", help="train recipe the cells start from, replacing the recipe's own `base:`"
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an axis over any config field (dotted too; tie keys with +: imb_ratio_l+imb_ratio_u=100,150); "
        "replaces the recipe's axis of that name; variant=a,b picks the recipe's variants",
    )
    parser.add_argument("--seeds", help="seeds to repeat every grid point with: 0,1,2 or 0-4")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting shared by every cell (not a grid axis)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="K=V,K=V",
        help="skip the cells matching all of these axis values (e.g. backbone=wrn28_2,pretrained=true)",
    )
    parser.add_argument(
        "--images-per-s-from",
        metavar="STUDY_DIR",
        help="measured images/s per backbone from a finished study's cells (estimates and --shard)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run a grid of training runs (backbones x algorithms x seeds, ablations) and report it",
        description="A study is a grid over any config fields x seeds; every cell is an ordinary "
        "`bacon-zoo train --resume` run in STUDY_DIR/cells/<cell>, so a study can be stopped, "
        "restarted and split across machines.",
    )
    sub = parser.add_subparsers(
        dest="study_command", metavar="{run,report,estimate}", required=True
    )

    run = sub.add_parser(
        "run",
        help="run (or continue) every cell of a study",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_plan_args(run)
    run.add_argument("--out", required=True, metavar="STUDY_DIR", help="the study directory")
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N (0-based), balanced by estimated cost (longest first)",
    )
    run.add_argument(
        "--cell", metavar="NAME", help="run exactly this cell (one array task per cell)"
    )
    run.add_argument(
        "--devices",
        metavar="0,1,..",
        help="run one cell per device at once, each with CUDA_VISIBLE_DEVICES set to its device",
    )
    run.add_argument(
        "--launcher",
        metavar="CMD",
        help='run each cell as `CMD train.py ...` (e.g. "accelerate launch --multi_gpu --num_processes 4")',
    )
    run.add_argument(
        "--executor",
        choices=("subprocess", "local", "slurm"),
        default="subprocess",
        help="subprocess: cells in this process's shell (default); slurm: a submitit job array; "
        "local: the same submitit path on this machine (all cells at once)",
    )
    slurm = run.add_argument_group("submitit (--executor slurm / local)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument(
        "--gpus-per-cell", type=int, metavar="N",
        help="GPUs per cell; 0 runs the cells on CPUs (default: 1 where the partition has GPUs, "
        "as `sinfo -o %%G` shows them, else 0)",
    )  # fmt: skip
    slurm.add_argument(
        "--timeout-min", type=int, default=24 * 60, metavar="N",
        help="time limit per job; a cell that needs longer is checkpointed and requeued (default 1440)",
    )  # fmt: skip
    slurm.add_argument("--slurm-array-parallelism", type=int, metavar="N", help="cells at once")
    slurm.add_argument("--cpus-per-cell", type=int, metavar="N")
    slurm.add_argument("--mem-gb", type=float, metavar="GB")
    slurm.add_argument(
        "--signal-delay-s", type=int, default=120, metavar="S",
        help="SLURM sends USR2 this long (and up to 60 s more) before the limit: the cell checkpoints, "
        "the job requeues (default 120; --timeout-min must leave time before it)",
    )  # fmt: skip
    slurm.add_argument(
        "--wait", action="store_true", help="slurm: wait for every job (local always waits)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the backbones, print each cell's status and command and the cost estimate",
    )
    run.add_argument(
        "--no-report", action="store_true", help="don't write the report when an unsharded run ends"
    )
    run.set_defaults(func=run_command)

    report = sub.add_parser("report", help="write results.csv, report.md and plots of a study")
    report.add_argument("study_dir", metavar="STUDY_DIR")
    report.set_defaults(func=report_command)

    estimate = sub.add_parser(
        "estimate", help="estimated device-hours of a study's cells, per backbone and in total"
    )
    _add_plan_args(estimate)
    estimate.add_argument(
        "--reference-images-per-s",
        type=float,
        metavar="N",
        help="images/s of WRN-28-2 at 32 px on one of your devices (replaces the assumed number)",
    )
    estimate.set_defaults(func=estimate_command)


def _plan(args: argparse.Namespace, out: str):
    from bacon_zoo.study.grid import parse_exclude, parse_grid, parse_seeds
    from bacon_zoo.study.runner import plan_study

    return plan_study(
        out,
        recipe=args.recipe,
        grid=parse_grid(args.grid),
        seeds=parse_seeds(args.seeds) if args.seeds else None,
        sets=args.set,
        exclude=[parse_exclude(e) for e in args.exclude],
        base=args.base,
    )


def _measured(args: argparse.Namespace) -> dict:
    from bacon_zoo.study.cost import measured_throughput, study_summaries

    src = getattr(args, "images_per_s_from", None)
    return measured_throughput(study_summaries(src)) if src else {}


def _estimate_lines(study, measured: dict, reference=None) -> list[str]:
    from bacon_zoo.study.cost import estimate_cell, estimate_table, pick_reference
    from bacon_zoo.study.runner import cell_configs

    reference = reference or pick_reference(measured)
    costs = [
        estimate_cell(c.name, cfg, measured, reference)
        for c, cfg in zip(study.cells, cell_configs(study))
    ]
    return [
        f"Estimated cost of {len(costs)} cells (an ESTIMATE from the cost model, one device per cell):",
        "",
        *estimate_table(costs, reference),
    ]


def run_command(args: argparse.Namespace) -> int:
    from bacon_zoo.errors import UserError
    from bacon_zoo.study.grid import parse_shard
    from bacon_zoo.study.runner import cell_configs, parse_devices, run_study, select_cells

    shard = parse_shard(args.shard)
    devices = parse_devices(args.devices)
    study = _plan(args, args.out)
    measured = _measured(args)
    if args.executor != "subprocess" and devices:
        raise UserError(
            f"--devices is for --executor subprocess; {args.executor} places cells itself"
        )
    if args.dry_run:
        from bacon_zoo.study.cost import check_backbones

        errors = check_backbones(cell_configs(study))
        if errors:
            raise UserError("; ".join(errors))
        run_study(study, shard, args.launcher, True, log=_log, cell=args.cell, measured=measured)
        _log("")
        _log("\n".join(_estimate_lines(study, measured)))
        return 0
    if args.executor != "subprocess":
        return _submit(args, study, select_cells(study, shard, args.cell, measured))
    outcome = run_study(
        study, shard, args.launcher, log=_log, cell=args.cell, devices=devices, measured=measured
    )
    whole = shard[1] == 1 and args.cell is None
    if whole and not args.no_report and not outcome["interrupted"] and not outcome["pending"]:
        from bacon_zoo.study.report import write_report

        _log(f"report: {write_report(study.dir)}")
    else:
        _log(f"report: bacon-zoo study report {study.dir}")
    if outcome["stopped_by"] or outcome["interrupted"] or outcome["pending"]:
        # 128 + the signal, as a shell reports it: 130 after Ctrl-C, 143 after SIGTERM (requeue)
        name = (outcome["stopped_by"] or ["SIGTERM"])[0]
        return 128 + int(getattr(signal, name))
    return 1 if outcome["failed"] else 0


def _submit(args: argparse.Namespace, study, cells: list) -> int:
    from bacon_zoo.study.executors import submit_study, wait_jobs

    jobs = submit_study(
        study,
        cells,
        executor=args.executor,
        launcher=args.launcher,
        log=_log,
        partition=args.partition,
        gpus_per_cell=args.gpus_per_cell if args.executor == "slurm" else 0,  # None: by partition
        timeout_min=args.timeout_min,
        array_parallelism=args.slurm_array_parallelism,
        cpus_per_cell=args.cpus_per_cell,
        mem_gb=args.mem_gb,
        signal_delay_s=args.signal_delay_s,
    )
    if not jobs or (args.executor == "slurm" and not args.wait):
        _log(f"follow with: squeue --me; then: bacon-zoo study report {study.dir}")
        return 0
    outcome = wait_jobs(jobs, log=_log)
    if not args.no_report:
        from bacon_zoo.study.report import write_report

        _log(f"report: {write_report(study.dir)}")
    counts = ", ".join(
        f"{len(names)} {kind}" + (f" ({', '.join(names)})" if kind != "trained" else "")
        for kind, names in outcome.items()
        if names
    )
    _log(f"study {study.dir}: {counts}")
    # failed or cancelled cells: 1 (their progress is checkpointed; `study run` again resumes them)
    return 1 if outcome["failed"] or outcome["cancelled"] else 0


def report_command(args: argparse.Namespace) -> int:
    from bacon_zoo.study.report import write_report

    path = write_report(args.study_dir)
    print(path.read_text(), end="")
    print(f"\nwrote {path}, {path.parent / 'results.csv'} and plots")
    return 0


def estimate_command(args: argparse.Namespace) -> int:
    from bacon_zoo.study.cost import Reference

    study = _plan(args, "study-estimate")  # nothing is written
    reference = None
    if args.reference_images_per_s:
        ips = args.reference_images_per_s
        reference = Reference("wrn28_2", 32, ips, f"given: WRN-28-2 at {ips:,.0f} images/s")
    print("\n".join(_estimate_lines(study, _measured(args), reference)))
    return 0


def _log(msg: str) -> None:
    print(msg, flush=True)
