import itertools

import pytest
import torch

from magicme.errors import SettingError
from magicme.v2v.tiles import denoise_tiled, sharpen, tile_starts, tile_weights, upscale_frames


@pytest.mark.parametrize(("height", "width"), [(1024, 1024), (720, 1280), (512, 512), (300, 900), (1000, 536)])
def test_tile_weights_sum_to_one_everywhere(height: int, width: int) -> None:
    total = torch.zeros(height, width)
    for rows, columns, weight in tile_weights(height, width, tile=512, overlap=64):
        assert weight.min() > 0
        total[rows, columns] += weight
    assert torch.allclose(total, torch.ones(height, width), atol=1e-6)


def test_tiles_cover_with_the_requested_overlap() -> None:
    starts = tile_starts(1280, 512, 64)
    assert len(starts) == 3 and starts[0] == 0 and starts[-1] + 576 == 1280
    assert all(b - a <= 576 - 64 for a, b in itertools.pairwise(starts))
    assert len(tile_starts(1024, 512, 64)) == 2, "a 2x upscaled 512 px clip takes 2 x 2 tiles, as in the reference"
    assert tile_starts(560, 512, 64) == [0], "a frame within one padded tile is one tile"
    with pytest.raises(ValueError, match="overlap: must be in"):
        tile_starts(1280, 512, 512)


def test_a_denoiser_that_returns_its_input_reproduces_the_frames() -> None:
    frames = torch.rand(3, 3, 200, 344, generator=torch.Generator().manual_seed(0))
    shapes = []

    def identity(tile: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(tile.shape))
        return tile

    noise = torch.randn(1, 4, 3, 25, 43)
    assert torch.allclose(denoise_tiled(frames, identity, noise, tile=128, overlap=32), frames, atol=1e-6)
    assert all(shape == (1, 3, 3, 160, 160) for shape in shapes), "memory is bounded by tile + overlap"


def test_seams_blend_smoothly() -> None:
    """Two tiles that disagree by a constant meet in a ramp, not a step."""
    frames = torch.zeros(1, 3, 64, 200)
    calls = iter(range(10))
    noise = torch.randn(1, 4, 1, 16, 50)  # a latent scale of 4
    blended = denoise_tiled(frames, lambda tile, noise: tile + next(calls), noise, tile=100, overlap=56)
    row = blended[0, 0, 0]
    assert row[0] == 0 and row[-1] == 1
    assert (row.diff() >= 0).all() and row.diff().max() < 0.05


def test_lanczos_upscale_doubles_to_multiples_of_8() -> None:
    frames = torch.rand(2, 3, 60, 100)
    assert upscale_frames(frames, 2).shape == (2, 3, 120, 200)
    assert upscale_frames(torch.rand(1, 3, 61, 99), 2).shape == (1, 3, 120, 200)


def test_sharpening_raises_local_contrast_only_when_asked() -> None:
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 0.6
    edge[..., :8] = 0.4
    assert torch.equal(sharpen(edge, 0.0), edge)
    sharp = sharpen(edge, 0.2)
    assert sharp[0, 0, 5, 7] < 0.4 and sharp[0, 0, 5, 8] > 0.6
    assert torch.equal(sharp[0, 0, 5, 2], edge[0, 0, 5, 2]), "flat areas stay as they are"


def test_tiles_are_renoised_with_crops_of_one_noise_field() -> None:
    """Where two tiles overlap they start from the same noise: the crop of the clip's field under them."""
    frames = torch.rand(2, 3, 64, 200)
    field = torch.randn(1, 4, 2, 8, 25, generator=torch.Generator().manual_seed(0))
    crops = []
    denoise_tiled(frames, lambda tile, noise: crops.append(noise) or tile, field, tile=96, overlap=32)
    starts = tile_starts(200, 96, 32, align=8)
    assert len(crops) == len(starts) == 3 and all(start % 8 == 0 for start in starts)
    for start, crop in zip(starts, crops, strict=True):
        assert torch.equal(crop, field[..., start // 8 : start // 8 + 16])


def test_a_tile_that_does_not_fit_the_latent_grid_is_refused() -> None:
    with pytest.raises(SettingError, match="multiple of 8"):
        tile_starts(1000, 500, 50, align=8)
