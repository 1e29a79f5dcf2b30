"""How the world benchmarks save what they measured: the command, the minutes it took, the results."""

import json
import sys
import time
from pathlib import Path


def write_record(output: Path, started: float, **results: object) -> float:
    """Write `output` as JSON with the command that made it; returns the minutes since `started`."""
    minutes = (time.perf_counter() - started) / 60
    command = "python benchmarks/" + Path(sys.argv[0]).name
    record = {"command": command, "minutes": round(minutes, 1), **results}
    output.write_text(json.dumps(record, indent=1) + "\n")
    return minutes
