"""The 3D Gaussian noise prior of T2V VCD (Magic-Me, arXiv 2402.09368, section 3.2).

The initial latents of the F frames are drawn jointly from N(0, Sigma) with
Sigma[m][n] = gamma ** |m - n|, the same for every channel and pixel. That Sigma is the
covariance of a stationary AR(1) sequence, so it is drawn exactly in O(F):

    z_0 = e_0,   z_t = gamma * z_{t-1} + sqrt(1 - gamma**2) * e_t,   e_t ~ N(0, I).

The V2V stages re-noise with the same prior: a `NoiseField` draws a clip's noise with one
generator seeded once, so the seed and gamma mean the same thing in every stage.
"""

import math

import torch
from diffusers.utils.torch_utils import randn_tensor

from magicme.types import Latents


def validate_gamma(gamma: float) -> None:
    """gamma must lie in [0, 1): 1 makes every frame the same noise, so Sigma is singular."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(
            f"`gamma` must be in [0, 1), got {gamma}: 0 gives independent frames, "
            "larger values steadier video (the paper's best is 0.1; 0.2 already freezes motion)."
        )


def frame_covariance(num_frames: int, gamma: float) -> torch.Tensor:
    """Sigma[m][n] = gamma ** |m - n|, the prior's (F, F) covariance over frames."""
    validate_gamma(gamma)
    frames = torch.arange(num_frames, dtype=torch.float64)
    return gamma ** (frames[:, None] - frames[None, :]).abs()


def sample_noise_prior(
    shape: tuple[int, int, int, int, int],
    gamma: float,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw latents of shape (B, C, F, H, W) whose frames have covariance gamma ** |m - n|.

    The independent draws come from diffusers' `randn_tensor`, exactly as stock AnimateDiff
    draws them (a list of generators gives one per video), so gamma = 0 reproduces the stock
    noise bit for bit and the same generator state always gives the same tensor.
    """
    validate_gamma(gamma)
    if len(shape) != 5:
        raise ValueError(f"expected a latent shape (B, C, F, H, W), got {tuple(shape)}")
    noise = randn_tensor(shape, generator=generator, device=torch.device(device or "cpu"), dtype=dtype)
    if gamma == 0.0:
        return noise
    innovation_scale = math.sqrt(1.0 - gamma**2)
    frames = noise.float().unbind(dim=2)  # F tensors of (B, C, H, W)
    correlated = [frames[0]]
    for innovation in frames[1:]:
        correlated.append(gamma * correlated[-1] + innovation_scale * innovation)
    return torch.stack(correlated, dim=2).to(dtype)


class NoiseField:
    """A clip's noise from the prior, drawn by one generator seeded once: the same seed, the same noise.

    `channels` and `scale` are the model's latent channels and pixels per latent cell.
    """

    def __init__(self, gamma: float, seed: int, channels: int = 4, scale: int = 8) -> None:
        validate_gamma(gamma)
        self.gamma, self.channels, self.scale = gamma, channels, scale
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, num_frames: int, height: int, width: int) -> Latents:
        """The next field for F frames of `height` x `width` pixels: (1, C, F, height / scale, width / scale)."""
        if height % self.scale or width % self.scale:
            raise ValueError(f"{width}x{height} pixels is not a multiple of the latent scale {self.scale}")
        shape = (1, self.channels, num_frames, height // self.scale, width // self.scale)
        return sample_noise_prior(shape, self.gamma, generator=self.generator)
