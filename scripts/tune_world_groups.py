"""Fine-tune a trained world model on group scenes, so it can draw two or three people, each where
the prompt names them; write the tuned model (with the instruments, unchanged) to --out.

Only the image model (text encoder and UNet) is tuned; the autoencoder and the motion module
are the trained model's. Resumable like scripts/train_world.py: run the same command again
after an interruption and it continues from the last checkpoint in --run-dir. The shipped model
is this script's defaults applied to scripts/train_world.py's model (see that script).
"""

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import torch
from diffusers import MotionAdapter, StableDiffusionPipeline

from magicme.io.files import atomic_path
from magicme.world.model import world_model_paths
from magicme.world.train import GroupTuningSettings, export_world_model, tune_on_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained world model (scripts/train_world.py)")
    parser.add_argument("--out", type=Path, required=True, help="where the tuned model goes")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/world-groups"), help="checkpoints")
    for field in dataclasses.fields(GroupTuningSettings):
        flag, kind = f"--{field.name.replace('_', '-')}", type(field.default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=kind, default=field.default)
    args = parser.parse_args()
    settings = GroupTuningSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GroupTuningSettings)})
    started = time.perf_counter()
    base, motion = world_model_paths(args.model)
    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=torch.float32)
    adapter = MotionAdapter.from_pretrained(motion, dtype=torch.float32)
    export_world_model(tune_on_groups(args.run_dir, pipe, settings), adapter, args.out)
    with atomic_path(args.out / "instruments") as partial:
        shutil.copytree(args.model / "instruments", partial)
        shutil.rmtree(args.out / "instruments", ignore_errors=True)
    print(f"tuned world model written to {args.out} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
