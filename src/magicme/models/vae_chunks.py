"""How many frames the VAE encodes or decodes at once: as many as the free memory holds.

One frame at a time (VAE slicing) needs the least memory and leaves a GPU idle between
small calls; stock diffusers decodes 16 frames at once whatever their size, which at 512 px
is several GB of activations (see BENCHMARKS.md, "VAE chunks"). magicme sizes each chunk
to the memory free on the device when the call starts, from the measured activation
memory of one frame, so a large card decodes a clip in one call and a small one in
several, with no setting to tune. `--vae-slicing` still forces one frame at a time.
"""

import os

import torch
from diffusers import AnimateDiffPipeline

# Peak activation bytes per output pixel of one frame through the SD-1.5 VAE decoder in fp32
# (the slope of peak memory over frames, measured by benchmarks/memory_and_batching.py on the
# CPU); half precision needs half. The encoder needs less, so the same chunk fits it.
DECODE_BYTES_PER_PIXEL = 2400
MEMORY_SHARE = 0.8  # of the free memory: the rest is headroom for the allocator and other tensors


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: CUDA's free memory plus what torch holds cached but unused;
    elsewhere (CPU, or MPS's unified memory) the system's free RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def vae_chunk(pipe: AnimateDiffPipeline, frames: int, height: int, width: int) -> int:
    """Frames of `height` x `width` pixels the pipeline's VAE should take per call, out of `frames`."""
    if pipe.vae.use_slicing:
        return 1
    per_frame = DECODE_BYTES_PER_PIXEL * height * width * pipe.vae.dtype.itemsize / 4
    fitting = int(MEMORY_SHARE * free_memory(pipe._execution_device) / per_frame)
    return max(1, min(frames, fitting))
