"""Identities per hour learned one at a time against learned together, on the world model.

    python benchmarks/packed_training.py                    # 3 identities x the recipe's 300 steps
    python benchmarks/packed_training.py --steps 2          # checks the script

The first `--identities` identities of the world's report split, each learned from its five
photos with the world's recipe: first one after another (`train_identity`, as `magicme
train` runs them), then together (`train_identities`: one loaded model, every identity's
samples in one UNet call per step). Reported: seconds and identities per hour for each, the
speed-up, and how far each identity's learned rows are from learning it alone with the same
seed (they differ only by the rounding of a larger batch).
Writes benchmarks/results-packed-training.json and prints the Markdown table.
"""

import argparse
import tempfile
import time
from pathlib import Path

from record import write_record

from magicme.identity.files import load_identity
from magicme.identity.train import train_identities, train_identity
from magicme.settings import TrainingSettings
from magicme.world import scenes
from magicme.world.recipe import RECIPE, reporting_split

HERE = Path(__file__).resolve().parent


def identity_settings(work: Path, count: int, steps: int, way: str) -> list[TrainingSettings]:
    settings = []
    for identity in reporting_split(count):
        photos = work / f"photos-{identity}"
        if not photos.is_dir():
            scenes.write_identity_photos(photos, identity)
        output = work / way / f"id{identity}"
        settings.append(RECIPE.training(photos, name=f"id{identity}", steps=steps, output_dir=str(output)))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=3)
    parser.add_argument("--steps", type=int, default=RECIPE.training_steps)
    parser.add_argument("--output", type=Path, default=HERE / "results-packed-training.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        timing = time.perf_counter()
        alone = [train_identity(s) for s in identity_settings(work, args.identities, args.steps, "alone")]
        alone_seconds = time.perf_counter() - timing
        timing = time.perf_counter()
        together = train_identities(identity_settings(work, args.identities, args.steps, "together"))
        together_seconds = time.perf_counter() - timing
        differences = [
            (load_identity(a).embeddings - load_identity(t).embeddings).abs().max().item()
            for a, t in zip(alone, together, strict=True)
        ]
    rows = {
        "one at a time": {"seconds": round(alone_seconds, 1)},
        "together": {"seconds": round(together_seconds, 1)},
    }
    for row in rows.values():
        row["identities_per_hour"] = round(3600 * args.identities / row["seconds"], 1)
    speedup = alone_seconds / together_seconds
    minutes = write_record(
        args.output,
        started,
        identities=args.identities,
        steps=args.steps,
        ways=rows,
        speedup=round(speedup, 2),
        max_row_difference=max(differences),
    )
    print("| training | seconds | identities per hour |\n|---|---|---|")
    for way, row in rows.items():
        print(f"| {way} | {row['seconds']} | {row['identities_per_hour']} |")
    print(f"\nspeed-up {speedup:.2f}x; largest difference of a learned row {max(differences):.2e}; {minutes:.1f} min")


if __name__ == "__main__":
    main()
