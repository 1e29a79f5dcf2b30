"""The plain types that cross module boundaries; importing this loads no model library.

One frame layout (`Frames`) and one latent layout (`Latents`) are used everywhere, so a
stage never guesses what it was handed.
"""

from collections.abc import Callable

import numpy as np
import torch

Frames = torch.Tensor  # (F, 3, H, W) floats in [0, 1]
Latents = torch.Tensor  # (B, C, F, h, w): B videos, C latent channels, F frames, h x w = H x W / scale
Box = tuple[int, int, int, int]  # x, y, width, height in pixels
Place = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame's width and height
FaceDetector = Callable[[np.ndarray], list[Box]]  # one RGB uint8 frame (H, W, 3) -> its face boxes
FaceEmbedder = Callable[[np.ndarray], torch.Tensor | None]  # one RGB uint8 image -> (D,), or None: no face
# Re-noise B same-sized clips `frames` (B, F, 3, H, W) with `noise` (B, C, F, H / s, W / s) to the
# stage's strength and denoise each as a video; returns (B, F, 3, H, W). The caller owns the noise.
Denoiser = Callable[[torch.Tensor, Latents], torch.Tensor]
# (frames, height, width) -> the next noise field (1, C, F, height / s, width / s) of a clip, from its prior
NoiseSource = Callable[[int, int, int], Latents]
