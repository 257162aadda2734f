"""Smoke test of the benchmark scripts: each runs at its ``--quick`` size and prints its table.

These are not timed tests: only the exit status and the presence of the table are checked,
never a number. Results go to a temporary folder, not to ``benchmarks/results/``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = {
    "fanout.py": "Fan-out latency",
    "cross_site.py": "Keystroke latency across sites",
    "traces.py": "Trace replay through the server",
    "open_notebook.py": "Opening a notebook",
    "memory.py": "Server RSS with open rooms",
    "reconnect.py": "Reconnect after missing K updates",
    "checkpoint.py": "Checkpoint to the embedded CS3 gateway",
    "durability.py": "Updates per second a room accepts",
    "merge.py": "Merging a changed notebook into a live room",
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_runs_at_quick_size(script: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=BENCHMARKS.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"### {SCRIPTS[script]}" in result.stdout, result.stdout[-3000:]
    assert "\n|" in result.stdout  # the table itself
    assert len(list(tmp_path.glob("*-quick-*.json"))) == 1
