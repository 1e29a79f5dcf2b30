import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from magicme.t2v.noise_prior import frame_covariance, sample_noise_prior

SHAPE = (2, 4, 8, 8, 8)  # (B, C, F, H, W)


def empirical_frame_covariance(latents: torch.Tensor) -> torch.Tensor:
    frames = latents.permute(0, 1, 3, 4, 2).reshape(-1, latents.shape[2]).double()  # (samples, F)
    return frames.T @ frames / len(frames)


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 0.9])
def test_covariance_matches_sigma(gamma: float) -> None:
    # 2000 x 4 x 4 x 4 = 128k samples per frame pair: standard error about 0.003.
    latents = sample_noise_prior((2000, 4, 6, 4, 4), gamma, generator=torch.Generator().manual_seed(0))
    expected = frame_covariance(6, gamma)
    assert torch.allclose(empirical_frame_covariance(latents), expected, atol=0.02)
    assert expected[0, 3] == pytest.approx(gamma**3)


def test_gamma_zero_is_the_stock_iid_noise() -> None:
    prior = sample_noise_prior(SHAPE, 0.0, generator=torch.Generator().manual_seed(3))
    stock = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(3))
    assert torch.equal(prior, stock)


def test_same_seed_same_tensor_and_other_seed_differs() -> None:
    first = sample_noise_prior(SHAPE, 0.1, generator=torch.Generator().manual_seed(7))
    again = sample_noise_prior(SHAPE, 0.1, generator=torch.Generator().manual_seed(7))
    other = sample_noise_prior(SHAPE, 0.1, generator=torch.Generator().manual_seed(8))
    assert first.shape == SHAPE
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_one_generator_per_video() -> None:
    generators = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
    batch = sample_noise_prior(SHAPE, 0.3, generator=generators)
    for index, seed in enumerate((11, 12)):
        single = sample_noise_prior((1, *SHAPE[1:]), 0.3, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(batch[index : index + 1], single)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_dtype(dtype: torch.dtype) -> None:
    latents = sample_noise_prior(SHAPE, 0.1, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert latents.dtype == dtype and latents.shape == SHAPE
    assert torch.isfinite(latents.float()).all()


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5])
def test_gamma_outside_unit_interval_is_refused(gamma: float) -> None:
    with pytest.raises(ValueError, match=r"gamma` must be in \[0, 1\)"):
        sample_noise_prior(SHAPE, gamma)


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        sample_noise_prior((4, 8, 8, 8), 0.1)
