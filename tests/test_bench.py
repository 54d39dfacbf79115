"""The benchmark suite runs end to end in quick mode and writes well-formed results.

No timing thresholds here: whether a target is met is the benchmark's report,
not a test failure. This only proves `python -m bench --quick` works and its
results.json has a row for every scenario with the documented keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import RESULT_KEYS, SCENARIO_IDS

ROOT = Path(__file__).resolve().parent.parent


# Alone ~1.5 min; under make test's other workers on 2 cores up to ~4 (the four S3 rows
# publish 24 MiB each).
@pytest.mark.timeout(330)
def test_quick_run_writes_results_for_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, timeout=320,
    )
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    report = out[-4000:] + err[-4000:]
    assert proc.returncode == 0, report
    rows = json.loads(output.read_text())
    assert isinstance(rows, list) and rows, report
    for row in rows:
        assert set(RESULT_KEYS) <= row.keys(), row
        assert row["scenario"] in SCENARIO_IDS, row
        assert isinstance(row["figure"], str) and row["figure"], row
        assert isinstance(row["unit"], str), row
        for key in ("value", "baseline", "ratio"):
            assert row[key] is None or isinstance(row[key], int | float), row
        assert row["target"] is None or isinstance(row["target"], str), row
        assert row["met"] in (True, False, None), row
        if row["met"] is not None:
            assert row["target"] and row["value"] is not None, row
        if row["ratio"] is not None:
            assert row["baseline"], row
    assert {row["scenario"] for row in rows} == set(SCENARIO_IDS), report
    # The table went to stdout as well.
    assert "| scenario" in out
