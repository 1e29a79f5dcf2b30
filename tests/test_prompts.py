import pytest
import torch

from magicme.t2v.prompts import parse_prompt_schedule
from tests.conftest import quick_settings, record_unet_calls


def test_plain_prompt_is_not_a_schedule() -> None:
    assert parse_prompt_schedule("a photo of <alice> woman: smiling", 16) is None


@pytest.mark.parametrize("text", ["0: a cat | 8: a dog", "8: a dog\n0: a cat\n", " 0 :a cat|8:   a dog "])
def test_schedule_parses_and_sorts(text: str) -> None:
    assert parse_prompt_schedule(text, 16) == {0: "a cat", 8: "a dog"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4: a cat | 8: a dog", "must start at frame 0"),
        ("0: a cat | 16: a dog", "outside the clip's 16 frames"),
        ("0: a cat | 0: a dog", "names frame 0 twice"),
        ("0: a cat | a dog", "in every entry"),
    ],
)
def test_bad_schedules(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_prompt_schedule(text, 16)


def capture_text_conditioning(pipe, settings) -> torch.Tensor:
    """The per-frame text embeddings the UNet receives at its first call: (2F, 77, D)."""
    return record_unet_calls(pipe, settings)[0][1]["encoder_hidden_states"]


def test_prompt_travel_gives_each_frame_its_own_embedding(tiny_pipe) -> None:
    settings = quick_settings(prompt="0: a photo of <alice> woman walking | 4: a red car in the city")
    text = capture_text_conditioning(tiny_pipe, settings)
    positive = text[settings.num_frames :]  # (F, 77, D): CFG puts the negative half first
    assert positive.shape[0] == 8
    assert not torch.allclose(positive[0], positive[1])
    assert torch.allclose(positive[2], (positive[0] + positive[4]) / 2, atol=1e-5), "linear between keyframes"
    assert torch.allclose(positive[5], positive[7], atol=1e-6), "the last keyframe holds to the end"


def test_plain_prompt_conditions_every_frame_alike(tiny_pipe) -> None:
    positive = capture_text_conditioning(tiny_pipe, quick_settings())[8:]
    assert all(torch.equal(positive[0], frame) for frame in positive)
