"""Is the loop step slower than an older commit's? `headline.py` run alternately in both trees.

A wall time taken in one session cannot be compared with one from another (the CPU model, the load and
the thread count all change), so the older commit (`--ref`, default 1d8a7c9: the code when issue 24
was filed) is checked out in a throwaway `git worktree` and both trees run their own `headline.py`
(fp32, one thread) in turn: ref, current, ref, current, ... Each run pairs its trainer windows with bare
backbone blocks of the same process, and the bare backbone (`common.BareBackbone`) is the same code in
both trees, so the backbone normalises each run to the machine's speed at that moment:

    current step / ref step  ~  (ref trainer/backbone ratio) / (current trainer/backbone ratio)

Reported per round and as the median over rounds, next to the raw step times. Skips (exit 0, no
JSON) when the CIFAR-10 copy is absent, like `headline.py`.

    .venv/bin/python benchmarks/headline_vs_ref.py [--ref 1d8a7c9] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

ISSUE_24_REF = "1d8a7c9"  # main when issue 24 ("not slower than today's") was filed


def run_headline(tree: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `headline.py` run in `tree` (its own code on sys.path); returns its fp32 row."""
    cmd = [
        sys.executable, "benchmarks/headline.py", "--precisions", "no", "--threads", "1",
        "--windows", str(args.windows),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree))
    if (tree / "benchmarks" / "headline.py").read_text().count("--results-dir"):
        cmd += ["--results-dir", str(out_dir)]
        result = out_dir / "headline_cpu.json"
    else:  # older trees write into their own benchmarks/results (a throwaway worktree)
        result = tree / "benchmarks" / "results" / "headline_cpu.json"
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    row = json.loads(result.read_text())["rows"][0]
    return {
        "ratio": row["ratio"],
        "ratio_iqr": row["ratio_spread"]["iqr"],
        "trainer_step_ms": row["trainer_step_ms_median"],
        "backbone_step_ms": row["backbone_step_ms_median"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ref", default=ISSUE_24_REF, help="the older commit (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="ref + current runs, alternating")
    p.add_argument("--windows", type=int, default=6, help="timed windows per headline run")
    args = p.parse_args(argv)
    data = Path(os.environ.get("BACON_ZOO_CIFAR10") or common.REPO.parent / "shared" / "datasets" / "cifar10-jpeg")  # fmt: skip
    if not data.is_dir():
        print(f"headline_vs_ref: skipped, no CIFAR-10 copy at {data} (set BACON_ZOO_CIFAR10)")
        return None
    os.environ["BACON_ZOO_CIFAR10"] = str(data)
    started = common.now()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bacon-ref-") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(ref_tree), args.ref],
            cwd=common.REPO, check=True,
        )  # fmt: skip
        try:
            for i in range(args.rounds):
                ref = run_headline(ref_tree, Path(tmp), args)
                cur = run_headline(common.REPO, Path(tmp), args)
                rounds.append(
                    {"ref": ref, "current": cur, "step_ratio": ref["ratio"] / cur["ratio"]}
                )
                print(f"round {i + 1}: ratio ref {ref['ratio']:.4f}, current {cur['ratio']:.4f}; "
                      f"current step / ref step ~ {rounds[-1]['step_ratio']:.3f}")  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=common.REPO)
    step_ratio = statistics.median(r["step_ratio"] for r in rounds)
    payload = {
        "benchmark": "headline_vs_ref",
        "command": common.command_line(),
        "machine": common.machine_info(torch.device("cpu")),
        "ref": args.ref,
        "setting": "headline.py --precisions no --threads 1 in each tree (BaCon, B=16, mu=2, fp32, "
        "real CIFAR-10-LT, contrastive term on from step 1)",
        "rounds": rounds,
        "current_over_ref_step": step_ratio,
        "not_slower": step_ratio <= 1.0,
    }
    common.write_result("headline_vs_ref", torch.device("cpu"), payload, started)
    print(
        f"current step / ref ({args.ref}) step: {step_ratio:.3f} (median of {len(rounds)} rounds)"
    )
    return payload


if __name__ == "__main__":
    main()
