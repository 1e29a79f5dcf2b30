"""How the world benchmarks save what they measured: the command, the minutes it took, the results."""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from magicme.io.files import write_json
from magicme.world.recipe import RECIPE, WorldRecipe


def write_record(output: Path, started: float, **results: object) -> float:
    """Write `output` as JSON with the command that made it; returns the minutes since `started`."""
    minutes = (time.perf_counter() - started) / 60
    command = " ".join(["python benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    record = {"command": command, "minutes": round(minutes, 1), **results}
    write_json(record, output)
    return minutes


def add_steps_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inference-steps",
        type=int,
        default=RECIPE.inference_steps,
        help="sampling steps per clip (default: the recipe's; fewer only checks that the script runs)",
    )


def recipe_with_steps(args: argparse.Namespace) -> WorldRecipe:
    """The world's recipe sampling with `--inference-steps`: every clip of a script changes in one place."""
    return dataclasses.replace(RECIPE, inference_steps=args.inference_steps)
