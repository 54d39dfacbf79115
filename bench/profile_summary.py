"""Summarise a py-spy raw profile (`python -m bench --profile NAME` writes them).

`python -m bench.profile_summary FILE [--top N] [--match TEXT ...]`

Prints where the samples went: the share of samples whose innermost frame is
in each function (self), the share of samples that include each function
anywhere on the stack (inclusive), and for every `--match TEXT` the share of
samples with a frame containing TEXT. Idle time (the event loop waiting in
`select`/`epoll`) is shown separately so the shares of busy time are clear.
By default only the event-loop thread is counted: py-spy also samples the
worker threads (LMDB commits), which run beside it, and mixing them in hides
what limits an asyncio process.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def frame_name(frame: str) -> str:
    """`func (path/file.py:123)` -> `func (path/file.py)`."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if match:
            stacks.append((match["stack"].split(";"), int(match["count"])))
    return stacks


def is_idle(frames: list[str]) -> bool:
    leaf = frames[-1]
    return "select (selectors.py" in leaf or "poll" in leaf.split(" ")[0]


def in_worker_thread(frames: list[str]) -> bool:
    return any("Thread._bootstrap (" in f for f in frames[:3])


def summarise(path: Path, top: int, matches: list[str], main_only: bool = True) -> str:
    stacks = load(path)
    worker = sum(c for frames, c in stacks if in_worker_thread(frames))
    if main_only:
        # Worker threads (LMDB commits via to_thread) run beside the event loop; the
        # event loop thread is what limits an asyncio daemon, so it is shown alone.
        stacks = [(frames, c) for frames, c in stacks if not in_worker_thread(frames)]
    total = sum(c for _, c in stacks)
    idle = sum(c for frames, c in stacks if is_idle(frames))
    busy = total - idle
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if is_idle(frames):
            continue
        own[frame_name(frames[-1])] += count
        for name in {frame_name(f) for f in frames}:
            inclusive[name] += count
    scope = "event-loop thread only; " if main_only else ""
    out = [f"{path}: {scope}{total} samples, {idle} idle (event loop waiting), {busy} busy; "
           f"{worker} samples in worker threads{' (left out)' if main_only else ''}"]
    out.append(f"\nself time, % of busy samples (top {top}):")
    out += [f"  {100 * c / busy:5.1f}%  {name}" for name, c in own.most_common(top)]
    out.append(f"\ninclusive time, % of busy samples (top {top}):")
    out += [f"  {100 * c / busy:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    if matches:
        out.append("\nmatches, % of busy samples:")
        for text in matches:
            count = sum(c for frames, c in stacks
                        if not is_idle(frames) and any(text in f for f in frames))
            out.append(f"  {100 * count / busy if busy else 0:5.1f}%  {text}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", action="append", default=[])
    parser.add_argument("--all-threads", action="store_true",
                        help="count worker threads too (default: the event-loop thread only)")
    args = parser.parse_args()
    print(summarise(args.file, args.top, args.match, not args.all_threads))


if __name__ == "__main__":
    main()
