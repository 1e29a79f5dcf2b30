"""Jobs per hour of `magicme batch` with 1 and with 2 workers, and on a local Ray instance with 2
CPU workers, on the world model.

    python benchmarks/batch_throughput.py            # about 5 minutes on 2 CPU cores

The manifest: the first 3 identities of the world's report split, each learned from its
five photos (`--training-steps`, 100 by default), x 2 prompts x 2 seeds, each clip T2V
(16 frames, 64 px, 25 steps), Face VCD with the world's face locator, and the world's
identity instrument as `magicme eval`'s face model: 3 training jobs and 12 clip jobs
(`RECIPE.batch_manifest`). Each row runs the whole manifest into a fresh folder as
`magicme batch` does. Scaling efficiency = (jobs/h with 2 workers) / (2 x jobs/h with 1).
Writes benchmarks/results-batch-throughput.json and prints the Markdown table.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from record import write_record

from magicme.world.recipe import RECIPE

HERE = Path(__file__).resolve().parent


# How each row runs the manifest: `magicme batch` options.
EXECUTORS = {
    "1 worker": ["--workers", "1"],
    "2 workers": ["--workers", "2"],
    "Ray, 2 workers": ["--executor", "ray", "--workers", "2"],
}


def run(record: dict, folder: Path, name: str) -> dict[str, float]:
    path = folder / f"batch-{len(list(folder.glob('batch-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(record | {"output_dir": str(path.with_suffix(""))}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "magicme", "batch", str(path), *EXECUTORS[name]], check=True)
    seconds = time.perf_counter() - started
    jobs = len(record["identities"]) * (1 + len(record["prompts"]) * len(record["seeds"]))
    return {"jobs": jobs, "seconds": round(seconds, 1), "jobs_per_hour": round(3600 * jobs / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=3)
    parser.add_argument("--training-steps", type=int, default=100)
    parser.add_argument("--output", type=Path, default=HERE / "results-batch-throughput.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        record = RECIPE.batch_manifest(Path(work), args.identities, args.training_steps)
        results = {name: run(record, Path(work), name) for name in EXECUTORS}
    one = results["1 worker"]["jobs_per_hour"]
    for name, result in results.items():
        result["scaling_efficiency"] = 1.0 if name == "1 worker" else round(result["jobs_per_hour"] / (2 * one), 2)
    minutes = write_record(args.output, started, executors=results)
    print("| executor | jobs | seconds | jobs per hour | scaling efficiency |\n|---|---|---|---|---|")
    for name, result in results.items():
        cells = [name, *(result[key] for key in ("jobs", "seconds", "jobs_per_hour", "scaling_efficiency"))]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print(f"\n{minutes:.1f} min")


if __name__ == "__main__":
    main()
