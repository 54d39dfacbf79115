"""Crash points for crash-safety tests.

`crash_point(name)` kills the process with SIGKILL when the environment
variable `EVENTSTREAMD_CRASH_AT` names that point: a test can then crash the
real daemon at an exact bad moment (after an upload, before its bookkeeping)
that an outside `kill` could only hit by luck. Unset — always, in production —
it costs one string comparison.
"""

from __future__ import annotations

import os
import signal

_CRASH_AT = os.environ.get("EVENTSTREAMD_CRASH_AT", "")


def crash_point(name: str) -> None:
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)
