"""Train the miniature world's model (and its instruments) and write them into the package.

The shipped weights in src/magicme/assets/world were made by exactly (this script trains the
model, then the instruments; the second command tunes its image model on group scenes):

    python scripts/train_world.py --seed 0 --out runs/world-model
    python scripts/tune_world_groups.py --model runs/world-model --out src/magicme/assets/world

Training is resumable: run the same command again after an interruption and it continues
from the last checkpoint in --run-dir; finished stages are not redone.
"""

import argparse
import dataclasses
import time
from pathlib import Path

from magicme.world.model import WORLD_MODEL
from magicme.world.train import WorldTrainingSettings, export_world_model, train_instruments, train_world_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/world"), help="checkpoints and finished stages")
    parser.add_argument("--out", type=Path, default=Path(str(WORLD_MODEL)), help="where the trained model goes")
    for field in dataclasses.fields(WorldTrainingSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    settings = WorldTrainingSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(WorldTrainingSettings)}
    )
    started = time.perf_counter()
    pipe, adapter = train_world_model(args.run_dir, settings)
    export_world_model(pipe, adapter, args.out)
    train_instruments(args.run_dir / "instruments", settings, args.out / "instruments")
    print(f"world model written to {args.out} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
