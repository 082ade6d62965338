"""python -m bench [--sizes 100,1000,5000] [--out bench/results] ..."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

from bench import report
from bench.run import floor_phases, operator_phases, say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="100,1000,5000", help="task counts, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where results go")
    parser.add_argument("--idle-seconds", type=float, default=60, help="length of the idle measurement")
    parser.add_argument("--single-pauses", type=int, default=20, help="pauses of one task, for its p95")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor runs (pod and task)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the operator (raw stacks in the results folder)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    runs = []
    with tempfile.TemporaryDirectory(prefix="taskpod-bench-") as scratch:
        for n in sizes:
            say(f"N={n}: operator")
            run = {
                "n": n,
                "operator": asyncio.run(
                    operator_phases(
                        Path(scratch) / f"op-{n}",
                        n,
                        args.idle_seconds,
                        args.single_pauses,
                        args.out / f"profile-{stamp}-{n}.txt" if args.profile else None,
                    )
                ),
            }
            if not args.no_floor:
                say(f"N={n}: floor")
                run["floor"] = asyncio.run(floor_phases(Path(scratch) / f"floor-{n}", n))
                say(f"N={n}: task floor")
                run["task_floor"] = asyncio.run(floor_phases(Path(scratch) / f"tasks-{n}", n, tasks=True))
            runs.append(report.with_ratios(run))
    result = {"started": stamp, "machine": report.machine(), "versions": report.versions(), "runs": runs}
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    markdown = report.markdown(result)
    (args.out / f"bench-{stamp}.md").write_text(markdown)
    report.chart(result, args.out / f"bench-{stamp}.png")
    print(markdown)
    say(f"results: {path} (.md, .png beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
