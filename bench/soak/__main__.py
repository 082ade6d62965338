"""python -m bench.soak: run the soak, print its verdict, write report.json."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

from bench.soak import (
    say,
)
from bench.soak.run import Soak
from bench.soak.schedule import schedule


def summary(report: dict[str, Any]) -> str:
    ops = report["operations"]
    lines = [
        f"soak: {report['minutes']} min, seed {report['seed']}, {ops['total']} operations "
        f"({ops['scheduled']} scheduled), settled in {report['settle_seconds']}s; tasks at the end: "
        + ", ".join(f"{k} {v}" for k, v in report["tasks"]["phases_at_the_end"].items()),
        "  operations: " + ", ".join(f"{k} {v}" for k, v in ops["by_kind"].items()),
        "  faults: " + ", ".join(f"{k} {v}" for k, v in report["faults"].items()),
    ]
    for name, result in report["invariants"].items():
        lines.append(f"  {'ok  ' if result['ok'] else 'FAIL'} {name}: {result['what']}")
        lines += [f"       {v['task']}: {v['seen']}" for v in result["violations"][:20]]
        if len(result["violations"]) > 20:
            lines.append(f"       ... {len(result['violations']) - 20} more in report.json")
    return "\n".join(lines)


def default_directory() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "taskpod" / "soak" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long operations run (default 30)")
    parser.add_argument("--tasks", type=int, default=36, help="how many tasks at a time (default 36)")
    parser.add_argument("--seed", type=int, help="the schedule's seed (default: random, printed)")
    parser.add_argument("--rate", type=float, default=1.0, help="operations a second, on average (default 1)")
    parser.add_argument(
        "--kills", type=int, help="operator SIGKILLs (default: one per 6 minutes, at least 2)"
    )
    parser.add_argument("--settle-seconds", type=float, default=180, help="settle at most this long (180)")
    parser.add_argument("--dir", type=Path, help="run directory (default ~/.cache/taskpod/soak/<time>)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    kills = args.kills if args.kills is not None else max(2, round(args.minutes / 6))
    directory = (args.dir or default_directory()).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    ops = schedule(seed, args.minutes * 60, args.tasks, args.rate, kills)
    say(f"run directory {directory}; seed {seed}; {len(ops)} operations over {args.minutes:g} min")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: everything stopped
    soak = Soak(directory, args.settle_seconds, args.tasks)

    async def run() -> dict[str, Any]:
        try:
            return await soak.run(ops, args.minutes, seed)
        finally:
            await soak.down()

    try:
        soak.up()
        report = {"seed": seed, "directory": str(directory), **asyncio.run(run())}
    except KeyboardInterrupt:
        say(f"interrupted: everything it started is stopped; what it did is in {directory / 'ops.jsonl'}")
        return 130
    finally:
        if not soak.stopped:  # it failed before the run began
            asyncio.run(soak.down())
    (directory / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(summary(report))
    say(f"report: {directory / 'report.json'}; operations: {directory / 'ops.jsonl'}")
    return 0 if all(r["ok"] for r in report["invariants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
