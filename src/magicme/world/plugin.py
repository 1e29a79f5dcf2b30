"""The miniature world as a magicme plug-in (entry point `magicme.plugins: world`).

It adds `--detector world` (Face VCD), `--face-model world` (eval), `magicme demo` and the
studio's default model (offline, CPU).
Registering imports nothing heavy: each factory loads the world's instruments or demo
only when used.
"""

import argparse
import dataclasses
from pathlib import Path

from magicme import registry
from magicme.types import FaceDetector, FaceEmbedder


def world_face_detector() -> FaceDetector:
    """The world's trained face locator, for the built-in world model."""
    from magicme.world.instruments import world_instruments

    return world_instruments().locate_faces


def world_face_embedder(device: str) -> FaceEmbedder:
    """The world's trait-reading identity instrument."""
    from magicme.world.instruments import world_instruments

    return world_instruments().embed_face


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", type=Path, help="where the demo writes (default: outputs/demo, or outputs/demo-2 for two)"
    )
    parser.add_argument(
        "--identities", type=int, choices=(1, 2), default=1, help="how many identities to learn and film together"
    )
    parser.add_argument(
        "--identity",
        type=int,
        action="append",
        help="which held-out identity to learn (1000 to 1039; default 1010, and 1011 for the second; see the "
        "README); once per identity",
    )
    parser.add_argument(
        "--model-dir",
        help="a world model folder (base/, motion_adapter/), e.g. one `scripts/train_world.py --out` trained; "
        "default: the shipped one",
    )
    off = "the world's recipe leaves it off: it does not raise identity here (README)"
    parser.add_argument("--face-vcd", action="store_true", help=f"refine the faces with Face VCD ({off})")
    parser.add_argument("--tiled-vcd", action="store_true", help=f"upscale with Tiled VCD, not Lanczos ({off})")


def run_demo_command(args: argparse.Namespace) -> None:
    from magicme.errors import SettingError
    from magicme.world.demo import DemoSettings, GroupDemoSettings, run_demo, run_group_demo

    chosen = args.identity or []
    if chosen and len(chosen) != args.identities:
        raise SettingError("identity", f"--identities {args.identities} needs as many --identity, got {len(chosen)}")
    if args.identities == 2:
        if args.face_vcd or args.tiled_vcd:
            raise SettingError(
                "identities", "the two-identity demo films and upscales; drop --face-vcd and --tiled-vcd"
            )
        picked = {"identities": tuple(chosen)} if chosen else {}
        settings = GroupDemoSettings(model_dir=args.model_dir, **picked)
        video = run_group_demo(args.output_dir or Path("outputs/demo-2"), settings)
    else:
        picked = {"identity": chosen[0]} if chosen else {}
        settings = DemoSettings(model_dir=args.model_dir, face_vcd=args.face_vcd, tiled_vcd=args.tiled_vcd, **picked)
        video = run_demo(args.output_dir or Path("outputs/demo"), settings)
    print(
        f"video: {video}\nmetrics: {video.parent / 'metrics.json'}\ncontact sheet: {video.parent / 'contact-sheet.png'}"
    )


def world_preset() -> registry.ModelPreset:
    """The world model with the recipe's settings: what the studio opens with, offline on a CPU."""
    from magicme.world.model import world_model_paths
    from magicme.world.recipe import RECIPE

    def values(settings: object, *chosen_per_job: str) -> dict:
        return {k: v for k, v in dataclasses.asdict(settings).items() if k not in chosen_per_job}

    base, motion = world_model_paths()
    training = RECIPE.training(Path("."), validation_every=100)
    return registry.ModelPreset(
        label="the miniature world (built in: offline, CPU, 64 px)",
        model={"base_model": str(base), "motion_adapter": str(motion), "device": "cpu"},
        training=values(training, "photos", "name", "output_dir") | {"class_word": "person"},
        generation=values(RECIPE.generation(""), "prompt", "seed"),
        refine_face=values(RECIPE.face(), "prompt", "seed"),
        face_vcd=RECIPE.face_vcd_in_chain,  # off, as in the recipe: it does not raise identity here
        upscale=values(RECIPE.chain_upscale(), "prompt", "seed"),  # Lanczos while Tiled VCD does not help
        face_model="world",
    )


def register() -> None:
    registry.add_face_detector("world", world_face_detector)
    registry.add_face_embedder("world", world_face_embedder)
    demo = "learn a held-out identity of the miniature world and film it (trained model, offline, CPU)"
    registry.add_command("demo", registry.Command(demo, add_demo_arguments, run_demo_command))
    registry.add_model_preset("world", world_preset)
