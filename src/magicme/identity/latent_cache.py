"""The VAE latents of un-augmented training views, encoded once per run.

The VAE is frozen, so a view of a photo that training sees again (the same centre square,
mirrored or not) has the same latent distribution every time. With augmentation "flip" or
"none" a run of 400 steps x 4 photos encodes each view once instead of 1,600 times; the
paper's rotations and zooms make new pixels at every step, which must be encoded again.
Each sample is still drawn from the distribution with the run's generator, exactly as
`latent_dist.sample` draws it, so the cache changes no loss (tested).
"""

import torch
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor

View = tuple[int, bool]  # (photo index, mirrored)


class LatentCache:
    """Per view, the VAE posterior's mean and standard deviation, encoded one view at a time
    (so a view's latents do not depend on which others share its batch)."""

    def __init__(self, vae: AutoencoderKL) -> None:
        self.vae = vae
        self.moments: dict[View, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def sample(self, pixels: torch.Tensor, views: list[View], generator: torch.Generator) -> torch.Tensor:
        """Latents (B, C, h, w) for pixels (B, 3, S, S) in [-1, 1] of the given views, unscaled."""
        for view, image in zip(views, pixels, strict=True):
            if view not in self.moments:
                posterior = self.vae.encode(image[None].to(self.vae.device, self.vae.dtype)).latent_dist
                self.moments[view] = (posterior.mean[0], posterior.std[0])
        mean = torch.stack([self.moments[view][0] for view in views])
        std = torch.stack([self.moments[view][1] for view in views])
        return mean + std * randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    def clear(self) -> None:
        self.moments.clear()
