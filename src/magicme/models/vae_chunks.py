"""How many frames the VAE encodes or decodes per call: on a GPU, as many as the free memory holds.

Stock diffusers decodes 16 frames per call whatever their size: at 512 px in half precision
that is about 8 GB of activations (the per-pixel cost below). One frame at a time (VAE
slicing) needs the least memory, but on a GPU it leaves the device idle between small
calls. So on CUDA (and MPS) magicme sizes each call to the memory free when it starts, from
the measured activation memory of one frame: a large card decodes a clip in one call, a
small one in several, with no setting to tune. On the CPU one frame at a time was both the
smallest and the fastest (BENCHMARKS.md, "VAE chunks, crop batches and the training latent
cache"), so magicme takes one there. `--vae-slicing` forces one frame everywhere.
"""

import os

import torch
from diffusers import AnimateDiffPipeline

# Peak activation bytes per output pixel of one frame through the SD-1.5 VAE decoder in fp32: the
# slope of peak memory from 4 to 16 frames at 256 px, measured on the CPU by
# benchmarks/memory_and_batching.py (3,840; results-memory-and-batching-cpu.json). Half precision
# needs half. The encoder's slope was lower (2,550), so a chunk sized for decoding fits encoding.
DECODE_BYTES_PER_PIXEL = 3840
MEMORY_SHARE = 0.8  # of the free memory: the rest is headroom for the allocator and other tensors
ONE_FRAME_DEVICES = {"cpu"}  # where larger calls measured slower, not faster


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: CUDA's free memory plus what torch holds cached but unused;
    elsewhere (CPU, or MPS's unified memory) the system's free RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def vae_chunk(pipe: AnimateDiffPipeline, frames: int, height: int, width: int) -> int:
    """Frames of `height` x `width` pixels the pipeline's VAE should take per call, out of `frames`."""
    device = pipe._execution_device
    if pipe.vae.use_slicing or device.type in ONE_FRAME_DEVICES:
        return 1
    per_frame = DECODE_BYTES_PER_PIXEL * height * width * pipe.vae.dtype.itemsize / 4
    fitting = int(MEMORY_SHARE * free_memory(device) / per_frame)
    return max(1, min(frames, fitting))
