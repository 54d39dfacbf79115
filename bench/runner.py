"""`python -m bench [--quick] [--only A,B] [--output PATH] [--profile A,B]`.

Runs the scenarios in order, prints the results table and the process
busyness table, and writes the rows to bench/results.json (a list of objects
with scenario, figure, unit, value, baseline, ratio, target, met, plus note
and busy). A missed target is reported, not an error: the exit code is 1 only
when a scenario could not be run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import SCENARIO_IDS
from .common import Children
from .context import Ctx
from .rows import Row, fmt_busy
from .scenarios import SCENARIOS

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
OTHER_LOAD_WARNING = 0.4  # cores used by processes outside the benchmark worth warning about


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, every scenario (under a minute)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated scenarios to run (of: {', '.join(SCENARIO_IDS)})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the JSON results (default: bench/results.json)")
    parser.add_argument("--profile", default="",
                        help="comma-separated scenarios whose daemon runs under py-spy record")
    parser.add_argument("--profile-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "eventstreamd-bench-profiles",
                        help="where py-spy writes its collapsed stacks")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (daemon logs)")
    parser.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the daemon, for experiments (e.g. "
                             "LD_PRELOAD=... to take fsync out); results are then not comparable")
    args = parser.parse_args(argv)
    for option in ("only", "profile"):
        names = [n for n in getattr(args, option).split(",") if n]
        unknown = set(names) - set(SCENARIO_IDS)
        if unknown:
            parser.error(f"--{option}: unknown scenario(s) {', '.join(sorted(unknown))}")
        setattr(args, option, names)
    return args


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    header = ["scenario", "figure", "value", "unit", "baseline", "ratio", "target", "met"]
    body = [[r.scenario, r.figure, fmt(r.value), r.unit, fmt(r.baseline), fmt(r.ratio),
             r.target or "(report)", {True: "yes", False: "NO", None: "-"}[r.met]]
            for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(cells) for cells in body]
    return "\n".join(out)


def machine() -> str:
    tmp = tempfile.gettempdir()
    fs = "?"
    try:
        best = ""
        with open("/proc/mounts") as fh:
            for entry in fh:
                parts = entry.split()
                if tmp.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, fs = parts[1], parts[2]
    except OSError:
        pass
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"temp dir {tmp} on {fs}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    names = args.only or list(SCENARIO_IDS)

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    log(f"eventstreamd benchmarks ({'quick' if args.quick else 'full'}) on {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="eventstreamd-bench-"))
    children = Children()
    daemon_env = dict(item.split("=", 1) for item in args.daemon_env)
    if daemon_env:
        log(f"daemon environment for this run: {daemon_env}")
    ctx = Ctx(args.quick, tmp, children, set(args.profile), args.profile_dir, log, daemon_env)
    rows: list[Row] = []
    failed = []
    try:
        for name in names:
            log(f"{name}")
            begun = time.monotonic()
            try:
                new = SCENARIOS[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                failed.append(name)
                new = [Row(name, "(scenario failed)", "", None,
                           note=f"{type(exc).__name__}: {str(exc)[:500]}")]
            finally:
                children.end_all()
                for sub in tmp.glob(f"{name}*"):
                    if not args.keep:
                        shutil.rmtree(sub, ignore_errors=True)
            for row in new:
                log(f"  {row.figure}: {fmt(row.value)} {row.unit}"
                    + (f" (baseline {fmt(row.baseline)}, ratio {fmt(row.ratio)})"
                       if row.baseline else "")
                    + (f" target {row.target}: {'met' if row.met else 'MISSED'}"
                       if row.met is not None else ""))
            log(f"  ({time.monotonic() - begun:.1f}s)")
            rows += new
    finally:
        children.end_all()
        ctx.close()
        if args.keep:
            log(f"temp dirs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([r.as_dict() for r in rows], indent=2,
                                      ensure_ascii=False) + "\n")
    print()
    print(table(rows))
    print()
    print("Notes:")
    for r in rows:
        if r.note:
            print(f"- {r.scenario} / {r.figure}: {r.note}")
    print()
    print("Busyness during each measured phase (CPU s / wall s; 1.00 = one core; "
          f"{os.cpu_count()} cores here):")
    seen = set()
    for r in rows:
        if r.busy and r.scenario not in seen:
            seen.add(r.scenario)
            print(f"- {r.scenario}: {fmt_busy(r.busy)}")
    contended: list[tuple[str, float]] = []
    for r in rows:
        if r.busy and r.scenario not in [c[0] for c in contended]:
            ours = sum(v for k, v in r.busy.items()
                       if not k.startswith("baseline") and k != "machine")
            other = r.busy.get("machine", 0.0) - ours
            if other > OTHER_LOAD_WARNING:
                contended.append((r.scenario, other))
    if contended:
        print("WARNING: processes outside the benchmark used the CPU during: "
              + ", ".join(f"{name} (~{other:.2f} cores)" for name, other in contended)
              + "; those figures are lower than this machine can do.")
    print()
    missed = [f"{r.scenario} / {r.figure}" for r in rows if r.met is False]
    print(f"Targets missed: {', '.join(missed) if missed else 'none'}")
    if failed:
        print(f"Scenarios that could not run: {', '.join(failed)}", file=sys.stderr)
    log(f"results written to {args.output}; total {time.monotonic() - started:.1f}s")
    return 1 if failed else 0
