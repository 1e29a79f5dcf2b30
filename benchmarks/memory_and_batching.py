"""VAE chunks, crop batches and the training encode cache, each against the path stock diffusers takes.

    python benchmarks/memory_and_batching.py               # SD-1.5-sized random weights on the CPU
    python benchmarks/memory_and_batching.py --size gpu    # the same on CUDA, fp16
    python benchmarks/memory_and_batching.py --size tiny   # the tiny test model: checks the script

- vae: 16 frames decoded, and encoded, in chunks of 1 (VAE slicing), 4 and 16 (stock
  diffusers' default); seconds and the peak memory above the loaded weights. The slope of
  the decode's peak over frames is the per-pixel cost magicme sizes its chunks with
  (`magicme.models.vae_chunks`).
- tiles, faces: Tiled VCD (a 2x upscale in 9 tiles) and Face VCD (2 faces) with
  `crop_batch` 1 (one crop after another, as before) and all of the clip's crops in one batch;
  seconds, peak memory, and the largest difference between the two results.
- training: an ID-training step with `augment: none`, encoding each photo every step (as
  diffusers' textual_inversion.py does) against magicme's cache of each photo's latents.

Each setting runs in a process of its own (a process's peak resident memory only grows).
Results go to benchmarks/results-memory-and-batching-SIZE.json.
"""

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from run import SIZES, Size, build_components, build_video_pipeline, progress, synchronize, timed  # benchmarks/

from magicme.settings import FaceSettings, UpscaleSettings

HERE = Path(__file__).resolve().parent
VAE_FRAMES = 16
VAE_PIXELS = {"tiny": 64, "cpu": 256, "gpu": 512}
VAE_CHUNKS = (1, 4, 16)
PARTS = ("vae", "tiles", "faces", "training")


def current_memory(device: str) -> int:
    """Bytes in use now: CUDA's allocated memory, or this process's resident set."""
    if device == "cuda":
        return torch.cuda.memory_allocated()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def timed_with_peak(device: str, function: Callable[[], Any]) -> tuple[float, Any, float]:
    """(seconds, result, GB of memory at the peak above where it started) of one call. On CUDA the
    allocator's own peak; on the CPU the resident set sampled every millisecond from a thread (the
    process's lifetime peak would count building the model too)."""
    start = current_memory(device)
    peak, running = [start], threading.Event()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:

        def sample() -> None:
            while not running.wait(0.001):
                peak.append(max(peak[-1], current_memory(device)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    seconds, result = timed(function, 1, warmup=False)
    if device == "cuda":
        peak.append(torch.cuda.max_memory_allocated())
    else:
        running.set()
        sampler.join()
    return seconds, result, (max(peak) - start) / 2**30


def measure_vae(size_name: str, direction: str, chunk: int) -> dict:
    """Decode (or encode) VAE_FRAMES frames `chunk` at a time, as diffusers' pipelines do."""
    size, pixels = SIZES[size_name], VAE_PIXELS[size_name]
    vae = build_components(size_name)["vae"].to(size.device, size.dtype)
    generator = torch.Generator().manual_seed(0)
    if direction == "decode":
        inputs = torch.randn(VAE_FRAMES, 4, pixels // 8, pixels // 8, generator=generator)
    else:
        inputs = torch.rand(VAE_FRAMES, 3, pixels, pixels, generator=generator) * 2 - 1
    inputs = inputs.to(size.device, size.dtype)

    @torch.no_grad()
    def run(frames: torch.Tensor) -> torch.Tensor:
        if direction == "decode":
            return vae.decode(frames).sample
        return vae.encode(frames).latent_dist.mean

    run(inputs[:1])  # warm-up at one frame
    seconds, _, peak = timed_with_peak(size.device, lambda: torch.cat([run(part) for part in inputs.split(chunk)]))
    return {"seconds": seconds, "peak_above_weights_gb": peak}


def measure_crops(size_name: str, part: str, batch: int, output: Path) -> dict:
    """Tiled VCD or Face VCD over one random clip with `crop_batch` = batch; the frames go to `output`."""
    from magicme.v2v.denoiser import make_denoiser, noise_field_for
    from magicme.v2v.faces import refine_faces
    from magicme.v2v.tiles import tiled_vcd

    size = SIZES[size_name]
    pipe = build_video_pipeline(build_components(size_name), size)
    pipe.vae.disable_slicing()  # magicme's default: VAE chunks sized to the free memory
    frames = torch.rand(size.frames, 3, size.pixels, size.pixels, generator=torch.Generator().manual_seed(0))
    quarter = size.pixels // 4
    if part == "tiles":
        settings = UpscaleSettings("a photo of a woman", strength=0.4, num_inference_steps=5, sharpen=0.0)
        settings = dataclasses.replace(settings, tile=3 * quarter, overlap=quarter, crop_batch=batch)

        def run() -> torch.Tensor:
            return tiled_vcd(frames, make_denoiser(pipe, settings), noise_field_for(pipe, settings).draw, settings)
    else:
        settings = FaceSettings("a close up photo of a woman", num_inference_steps=size.steps, crop_batch=batch)
        boxes = [(quarter // 2, quarter, quarter, quarter), (5 * quarter // 2, quarter, quarter, quarter)]

        def run() -> torch.Tensor:
            denoise, noise = make_denoiser(pipe, settings), noise_field_for(pipe, settings).draw
            return refine_faces(
                frames, denoise, noise, lambda frame: boxes, guide_size=size.pixels, crop_factor=1.5, batch=batch
            )

    seconds, result, peak = timed_with_peak(size.device, run)
    from safetensors.torch import save_file

    save_file({"frames": result.contiguous()}, output)
    return {"seconds": seconds, "peak_above_weights_gb": peak}


def measure_training(size_name: str) -> dict:
    """One ID-training step (`augment: none`) re-encoding every photo against the cached latents."""
    import numpy as np
    from accelerate import Accelerator
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from PIL import Image

    from magicme.identity.photos import Photo
    from magicme.identity.train import IdentityTrainer
    from magicme.settings import TrainingSettings

    size = SIZES[size_name]
    components = build_components(size_name)
    components.pop("motion_adapter")
    rng = np.random.default_rng(0)
    side = size.pixels
    masked = [
        (
            Photo(Path(f"{i}.png"), Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)), str(i)),
            np.ones((side, side), dtype=bool),
        )
        for i in range(4)
    ]
    pipe = StableDiffusionPipeline(
        **components,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    settings = TrainingSettings(photos=".", name="bench", resolution=side, batch_size=4, augment="none")
    trainer = IdentityTrainer(settings, masked, Accelerator(cpu=size.device == "cpu"), pipe=pipe)
    for _ in range(3):  # warm-up; fills the cache with each photo's latents
        trainer.step()

    def encoding_every_step() -> float:
        trainer.latent_cache.clear()
        return trainer.step()

    encoding, _ = timed(encoding_every_step, size.repeats, warmup=False)
    cached, _ = timed(trainer.step, size.repeats, warmup=False)
    return {"encoding_every_step_seconds": encoding, "cached_seconds": cached, "ratio": cached / encoding}


def worker(args: argparse.Namespace) -> dict:
    part, setting = args.worker
    if part in ("decode", "encode"):
        return measure_vae(args.size, part, int(setting))
    if part == "training":
        return measure_training(args.size)
    return measure_crops(args.size, part, int(setting), Path(args.frames))


def run_worker(size_name: str, part: str, setting: int, frames: Path) -> dict:
    command = [sys.executable, __file__, "--size", size_name, "--worker", part, str(setting), "--frames", str(frames)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{part} {setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def vae_rows(size_name: str, folder: Path) -> dict:
    """Decode and encode in each chunk size, and the decode's memory per pixel of one frame."""
    chunks = {}
    for direction in ("decode", "encode"):
        for chunk in VAE_CHUNKS:
            progress(f"VAE {direction}, {chunk} frames at a time")
            chunks[f"{direction} {chunk}"] = run_worker(size_name, direction, chunk, folder / "unused")
    pixels = VAE_PIXELS[size_name]
    low, high = (chunks[f"decode {chunk}"]["peak_above_weights_gb"] for chunk in VAE_CHUNKS[1:])
    slope = (high - low) * 2**30 / (VAE_CHUNKS[2] - VAE_CHUNKS[1])
    return {"frames": VAE_FRAMES, "pixels": pixels, "chunks": chunks, "decode_bytes_per_pixel": slope / pixels**2}


def crop_rows(size_name: str, part: str, batches: tuple[int, int], folder: Path) -> dict:
    """Both batch settings of one stage, and how far apart their results are."""
    from safetensors.torch import load_file

    rows = {}
    for batch in batches:
        progress(f"{part}, crop batch {batch}")
        rows[str(batch)] = run_worker(size_name, part, batch, folder / f"{part}-{batch}.safetensors")
    one, many = (load_file(folder / f"{part}-{batch}.safetensors")["frames"] for batch in batches)
    one_seconds, many_seconds = (rows[str(batch)]["seconds"] for batch in batches)
    return {
        "batches": rows,
        "ratio": many_seconds / one_seconds,
        "max_abs_difference": (one - many).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="cpu")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    parser.add_argument(
        "--output", type=Path, default=None, help="default: benchmarks/results-memory-and-batching-SIZE.json"
    )
    parser.add_argument("--worker", nargs=2, metavar=("PART", "SETTING"), help=argparse.SUPPRESS)
    parser.add_argument("--frames", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    size: Size = SIZES[args.size]
    if size.device == "cuda" and not torch.cuda.is_available():
        sys.exit("the gpu size needs CUDA")
    started = time.perf_counter()
    synchronize()
    record = {
        "size": args.size,
        "device": torch.cuda.get_device_name() if size.device == "cuda" else f"{platform.machine()} CPU",
        "dtype": str(size.dtype),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {name: version(name) for name in ("magicme", "torch", "diffusers")},
        "command": " ".join(["python benchmarks/memory_and_batching.py", *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory() as folder:
        if "vae" in args.parts:
            record["vae"] = vae_rows(args.size, Path(folder))
        if "tiles" in args.parts:
            record["tiles"] = crop_rows(args.size, "tiles", (1, 9), Path(folder))
        if "faces" in args.parts:
            record["faces"] = crop_rows(args.size, "faces", (1, 2), Path(folder))
        if "training" in args.parts:
            progress("training step, encoding every step against the cache")
            record["training"] = run_worker(args.size, "training", 0, Path(folder) / "unused")
    record["seconds"] = time.perf_counter() - started
    output = args.output or HERE / f"results-memory-and-batching-{args.size}.json"
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
