import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "run.py"


def test_benchmark_script_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """The timings themselves live in BENCHMARKS.md; here only that the script works end to end."""
    output = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(BENCHMARK), "--size", "tiny", "--output", str(output)], check=True, capture_output=True
    )
    results = json.loads(output.read_text())
    for section, key in (("t2v", "per_step_ratio"), ("refinement", "ratio_to_t2v"), ("training", "ratio")):
        assert results[section][key] > 0
    assert results["t2v"]["prior_draw_seconds"] < results["t2v"]["vcd_seconds"]
    assert results["command"] == "python benchmarks/run.py --size tiny"
