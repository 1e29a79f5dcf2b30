"""How the world benchmarks save what they measured: the command, the minutes it took, the results."""

import sys
import time
from pathlib import Path

from magicme.io.files import write_json


def write_record(output: Path, started: float, **results: object) -> float:
    """Write `output` as JSON with the command that made it; returns the minutes since `started`."""
    minutes = (time.perf_counter() - started) / 60
    command = "python benchmarks/" + Path(sys.argv[0]).name
    record = {"command": command, "minutes": round(minutes, 1), **results}
    write_json(record, output)
    return minutes
