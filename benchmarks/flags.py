"""Each speed and memory flag's measured effect on one clip, through magicme's own loading.

    python benchmarks/flags.py                  # 16 frames, 128 px, 2 steps, fp32 on the CPU
    python benchmarks/flags.py --size gpu       # 16 frames, 512 px, 25 steps on CUDA (fp16 by default)
    python benchmarks/flags.py --size tiny --only defaults   # the tiny test model: checks the script

SD-1.5 + AnimateDiff v2 random weights (from the configs magicme ships) are saved once in
diffusers' layout; then each flag setting loads them with `load_pipeline`, the way
`magicme generate` does, and renders the same clip in a process of its own, because a
process's peak resident memory only grows. Reported per setting: load time, first clip
(includes torch.compile's compiling), second clip, and peak memory (CPU: the process's peak
resident set; CUDA: max_memory_allocated). Results go to benchmarks/results-flags-SIZE.json.
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from run import SIZES, build_components, peak_memory_gb, progress, synchronize  # benchmarks/run.py

from magicme.models.loading import CONFIGS, load_pipeline
from magicme.models.presets import PRESETS, with_preset
from magicme.settings import GenerationSettings, ModelSettings
from magicme.t2v.generate import generate

HERE = Path(__file__).resolve().parent
FLAGS = {  # what `magicme generate` is given -> the ModelSettings it sets
    "defaults (VAE chunks sized to memory)": {},
    "--vae-slicing": {"vae_slicing": True},
    "--vae-tiling": {"vae_tiling": True},
    "--dtype bf16": {"dtype": "bf16"},
    "--compile-unet": {"compile_unet": True},
}
GPU_FLAGS = {"--dtype fp32": {"dtype": "fp32"}, "--cpu-offload": {"cpu_offload": True}}
# A preset's sampler, steps and guidance on the same random weights: Lightning's and AnimateLCM's
# motion modules have AnimateDiff v2's layout, so they cost what these do (AnimateLCM's LoRA is not
# applied here).
PRESET_FLAGS = {f"--preset {name}": {} for name in PRESETS}
FRAMES = 16


def save_random_model(folder: Path, size_name: str) -> tuple[Path, Path]:
    """SD-1.5-sized random weights (or the tiny model's) in the layouts users download."""
    components = build_components(size_name)
    adapter = components.pop("motion_adapter")
    pipe = StableDiffusionPipeline(
        **components,
        scheduler=DDIMScheduler.from_pretrained(str(CONFIGS / "sd15"), subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
    )
    pipe.save_pretrained(folder / "base")
    adapter.save_pretrained(folder / "motion_adapter")
    return folder / "base", folder / "motion_adapter"


def measure(base: Path, motion: Path, flags: dict, size_name: str, preset: str | None = None) -> dict:
    """Load with `flags`, render the clip twice (sampling as `preset` samples); times and this process's peak memory."""
    size = SIZES[size_name]
    torch.manual_seed(0)
    started = time.perf_counter()
    pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), device=size.device, **flags))
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - started
    settings = GenerationSettings(
        prompt="a photo of a woman walking on the beach",
        num_frames=FRAMES,
        height=size.pixels,
        width=size.pixels,
        num_inference_steps=size.steps,
    )
    if preset:
        settings = with_preset(settings, preset)
    clips = []
    for _ in range(2):
        synchronize()
        started = time.perf_counter()
        generate(pipe, settings)
        synchronize()
        clips.append(time.perf_counter() - started)
    memory = peak_memory_gb(size.device)
    return {"load_seconds": loaded, "first_clip_seconds": clips[0], "clip_seconds": clips[1], "peak_memory_gb": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="cpu")
    parser.add_argument("--only", action="append", default=[], help="measure the flags whose names start so")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results-flags-SIZE.json")
    parser.add_argument("--worker", nargs=2, metavar=("BASE", "MOTION"), help=argparse.SUPPRESS)
    parser.add_argument("--flag", help=argparse.SUPPRESS)  # the worker's setting
    args = parser.parse_args()
    flags = FLAGS | PRESET_FLAGS | (GPU_FLAGS if args.size == "gpu" else {})
    flags = {name: value for name, value in flags.items() if not args.only or name.startswith(tuple(args.only))}
    if args.worker:
        base, motion = args.worker
        preset = args.flag.removeprefix("--preset ") if args.flag in PRESET_FLAGS else None
        print(json.dumps(measure(Path(base), Path(motion), flags[args.flag], args.size, preset)))
        return
    if SIZES[args.size].device == "cuda" and not torch.cuda.is_available():
        sys.exit("the gpu size needs CUDA")
    started, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as folder:
        progress("saving SD-1.5-sized random weights")
        base, motion = save_random_model(Path(folder), args.size)
        for flag in flags:
            progress(flag)
            command = [
                sys.executable,
                __file__,
                "--size",
                args.size,
                "--worker",
                str(base),
                str(motion),
                f"--flag={flag}",
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                results[flag] = {"error": done.stderr.strip().splitlines()[-1]}
            else:
                results[flag] = json.loads(done.stdout.strip().splitlines()[-1])
            print(flag, results[flag], flush=True)
    size = SIZES[args.size]
    device = torch.cuda.get_device_name() if size.device == "cuda" else f"{platform.machine()} CPU"
    record = {
        "size": args.size,
        "clip": f"{FRAMES} frames, {size.pixels} px, {size.steps} steps",
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "versions": {name: version(name) for name in ("magicme", "torch", "diffusers", "transformers")},
        "command": " ".join(["python benchmarks/flags.py", *sys.argv[1:]]),
        "flags": results,
        "seconds": time.perf_counter() - started,
    }
    output = args.output or HERE / f"results-flags-{args.size}.json"
    output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
