"""A chain's stages on one set of weights, against loading them for every stage (as before, and as
separate scripts on diffusers do), on SD-1.5-sized random weights saved as a diffusers folder.

    python benchmarks/chain_loading.py --size cpu    # 8 frames, 128 px, 2 steps: about 9 minutes on 2 cores
    python benchmarks/chain_loading.py --size gpu    # 16 frames, 512 px, 25 steps, fp16 on CUDA

The chain is T2V, Face VCD at 0.4 (a fixed face box: random weights draw no face) and Tiled VCD
(2x, at 0.2; both stages take 10 steps before strength, or the size's steps if more), run
by `magicme run`'s `run_chain`; "per stage" loads the weights for every stage, as before
sharing. One run of each (the chain's compute is the same in both; the loading differs).
Prints a Markdown table and writes benchmarks/results-chain-loading-SIZE.json (or --output).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from record import write_record
from run import SIZES, build_components

from magicme import registry
from magicme.chain import run_chain
from magicme.models import loading

HERE = Path(__file__).resolve().parent


def save_model(folder: Path, size_name: str) -> tuple[Path, Path]:
    """The random SD-1.5 + AnimateDiff v2 weights (or the tiny model's) as the folders users download."""
    components = build_components(size_name)
    image = {name: components[name] for name in ("vae", "text_encoder", "tokenizer", "unet")}
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    StableDiffusionPipeline(
        **image, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(folder / "base")
    components["motion_adapter"].save_pretrained(folder / "motion")
    return folder / "base", folder / "motion"


class ForgetsEachStage(dict):
    """A pipeline cache that never hits: every stage loads the weights again, as before sharing."""

    def __contains__(self, key: object) -> bool:
        return False


def chain_config(output: Path, base: Path, motion: Path, size_name: str) -> dict:
    size = SIZES[size_name]
    device = {"device": size.device, "dtype": "fp16" if size.dtype == torch.float16 else "fp32"}
    prompt = {"prompt": "a photo of a person"}
    v2v = prompt | {"num_inference_steps": max(size.steps, 10)}  # at strength 0.2, at least 2 steps
    face = {"detector": "fixed", "strength": 0.4, "guide_size": size.pixels, "min_enlargement": 1.0}
    clip = {"num_frames": size.frames, "height": size.pixels, "width": size.pixels, "num_inference_steps": size.steps}
    return {
        "output_dir": str(output),
        "model": {"base_model": str(base), "motion_adapter": str(motion)} | device,
        "generation": prompt | clip,
        "refine_face": v2v | face,
        "upscale": v2v | {"strength": 0.2, "tile": size.pixels, "overlap": size.pixels // 8},
    }


def fixed_face(frame) -> list:
    """A face box in the middle third of the frame, as a detector would find on a real clip."""
    height, width = frame.shape[:2]
    return [(width // 3, height // 3, width // 3, height // 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "cpu", "gpu"), default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    registry.add_face_detector("fixed", lambda: fixed_face)
    started = time.perf_counter()
    loads: list[float] = []  # seconds of each load_pipeline call

    def timed_load(settings):
        begin = time.perf_counter()
        pipe = load(settings)
        loads.append(time.perf_counter() - begin)
        return pipe

    load, loading.load_pipeline = loading.load_pipeline, timed_load
    measured = {}
    with tempfile.TemporaryDirectory() as work:
        base, motion = save_model(Path(work), args.size)
        for mode in ("per_stage", "shared"):
            loading._shared = ForgetsEachStage() if mode == "per_stage" else {}
            loads.clear()
            begin = time.perf_counter()
            run_chain(chain_config(Path(work) / mode, base, motion, args.size), "bench")
            measured[mode] = {"seconds": time.perf_counter() - begin, "loads": len(loads), "load_seconds": sum(loads)}
    before, after = measured["per_stage"], measured["shared"]
    print("| chain (T2V + Face VCD + Tiled VCD) | weights loaded | loading | whole chain | ratio |")
    print("|---|---|---|---|---|")
    for label, row in (("per stage (before)", before), ("shared (now)", after)):
        ratio = row["seconds"] / before["seconds"]
        print(f"| {label} | {row['loads']} | {row['load_seconds']:.1f} s | {row['seconds']:.1f} s | {ratio:.2f} |")
    output = args.output or HERE / f"results-chain-loading-{args.size}.json"
    write_record(output, started, size=args.size, results=measured)


if __name__ == "__main__":
    main()
