"""Jobs per hour of `magicme batch` with 1 and with 2 workers, on the world model.

    python benchmarks/batch_throughput.py            # about 10 minutes on 2 CPU cores

The manifest: the first 3 identities of the world's report split, each learned from its
five photos (`--training-steps`, 100 by default), x 2 prompts x 2 seeds, each clip T2V
(16 frames, 64 px, 25 steps), Face VCD with the world's face locator, and the world's
identity instrument as `magicme eval`'s face model: 3 training jobs and 12 clip jobs. Each
worker count runs the whole manifest into a fresh folder as `magicme batch` does (worker
processes sharing the queue). Scaling efficiency = (jobs/h with 2) / (2 x jobs/h with 1).
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

from magicme.world import scenes
from magicme.world.model import SIZE, world_model_paths
from magicme.world.recipe import RECIPE, reporting_split

HERE = Path(__file__).resolve().parent


def manifest(work: Path, identities: int, training_steps: int) -> dict:
    base, motion = world_model_paths()
    people = {}
    for identity in reporting_split(identities):
        photos = work / f"photos-{identity}"
        scenes.write_identity_photos(photos, identity)
        people[f"id{identity}"] = {"photos": str(photos), "class_word": "person"}
    training = RECIPE.training(Path("."), steps=training_steps)
    sampling = {"num_inference_steps": RECIPE.inference_steps, "guidance_scale": RECIPE.guidance}
    return {
        "model": {"base_model": str(base), "motion_adapter": str(motion), "device": "cpu"},
        "identities": people,
        "prompts": ["a close up photo of {identity} on the grass", "a close up photo of {identity} in the snow"],
        "seeds": [0, 1],
        "training": {"masks": training.masks, "num_tokens": training.num_tokens, "resolution": SIZE}
        | {"steps": training_steps, "learning_rate": training.learning_rate, "validation_every": 0, "device": "cpu"},
        "generation": {"height": SIZE, "width": SIZE} | sampling,
        "refine_face": {"detector": "world", "guide_size": SIZE, "strength": RECIPE.face_strength} | sampling,
        "evaluation": {"clip_model": "none", "dino_model": "none", "face_model": "world"},
    }


def run(record: dict, folder: Path, workers: int) -> dict[str, float]:
    path = folder / f"batch-{workers}.yaml"
    path.write_text(yaml.safe_dump(record | {"output_dir": str(folder / f"out-{workers}")}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "magicme", "batch", str(path), "--workers", str(workers)], check=True)
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
        record = manifest(Path(work), args.identities, args.training_steps)
        results = {str(workers): run(record, Path(work), workers) for workers in (1, 2)}
    efficiency = results["2"]["jobs_per_hour"] / (2 * results["1"]["jobs_per_hour"])
    minutes = write_record(args.output, started, workers=results, scaling_efficiency=round(efficiency, 2))
    print("| workers | jobs | seconds | jobs per hour |\n|---|---|---|---|")
    for workers, result in results.items():
        print(f"| {workers} | {result['jobs']} | {result['seconds']} | {result['jobs_per_hour']} |")
    print(f"\nscaling efficiency with 2 workers: {efficiency:.2f}; {minutes:.1f} min")


if __name__ == "__main__":
    main()
