"""Shared tiny components: built once per test run, offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `make test` runs two pytest-xdist workers: they split the cores, as `magicme batch` workers do,
# rather than each running one thread per core (set before torch loads, which reads it once).
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from magicme.identity.files import Identity, save_identity
from magicme.models.loading import load_pipeline
from magicme.settings import GenerationSettings, ModelSettings
from magicme.testing.tiny import TEXT_WIDTH, save_tiny_model


@pytest.fixture(autouse=True)
def work_in_a_fresh_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder: a command's default outputs (outputs/, runs/) never land in
    the checkout, where the other xdist worker's tests would see them come and go."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base folder, motion adapter folder) of the tiny model, in the layouts users download."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def identity_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-token identity named 'alice' in magicme's format, for the tiny text encoder."""
    embeddings = torch.randn(4, TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("identities") / "alice.safetensors"
    return save_identity(Identity("alice", embeddings, class_word="woman"), path)


def load_tiny_pipeline(tiny_model: tuple[Path, Path], identities: list[str]):
    base, motion = tiny_model
    return load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=identities))


@pytest.fixture
def make_pipe(tiny_model: tuple[Path, Path]) -> Callable:
    """A fresh tiny pipeline (identities mutate the tokenizer, so such tests get their own)."""
    return lambda identities=(): load_tiny_pipeline(tiny_model, list(identities))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model: tuple[Path, Path], identity_file: Path):
    """One shared tiny pipeline with 'alice' installed, for tests that do not change it."""
    return load_tiny_pipeline(tiny_model, [str(identity_file)])


def quick_settings(**overrides) -> GenerationSettings:
    """Tiny, fast generation settings: 8 frames of 64x64, 2 steps."""
    values = {"prompt": "a photo of a cat", "num_frames": 8, "height": 64, "width": 64, "num_inference_steps": 2}
    return GenerationSettings(**{**values, **overrides})


@pytest.fixture(scope="session")
def astronaut():
    """A real face photo (scikit-image ships it) as a magicme Photo."""
    import skimage.data
    from PIL import Image

    from magicme.identity.photos import Photo

    return Photo(Path("astronaut.png"), Image.fromarray(skimage.data.astronaut()), "astronaut")


@pytest.fixture(scope="session")
def astronaut_folder(tmp_path_factory: pytest.TempPathFactory, astronaut) -> Path:
    """Three different crops of the astronaut: a tiny photo set to learn from."""
    folder = tmp_path_factory.mktemp("photos")
    for index, box in enumerate([(0, 0, 512, 512), (20, 0, 500, 480), (60, 10, 460, 410)]):
        astronaut.image.crop(box).save(folder / f"astronaut{index}.jpg")
    return folder


def record_unet_calls(pipe, settings: GenerationSettings) -> list[tuple[tuple, dict]]:
    """Generate once and return every (args, kwargs) the UNet was called with, inputs cloned."""
    from magicme.t2v.generate import generate

    calls: list[tuple[tuple, dict]] = []

    def clone(value):
        return value.detach().clone() if isinstance(value, torch.Tensor) else value

    def hook(module, args, kwargs):
        calls.append((tuple(map(clone, args)), {key: clone(value) for key, value in kwargs.items()}))

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generate(pipe, settings)
    finally:
        handle.remove()
    return calls


@pytest.fixture(scope="session")
def unet_with_lora():
    """The tiny UNet with a rank-2 attention LoRA whose weights are all random (none left at zero),
    and that LoRA's peft state."""
    from peft.utils import get_peft_model_state_dict

    from magicme.identity.lora import add_unet_lora
    from magicme.testing.tiny import build_tiny_model

    unet = build_tiny_model(seed=1)[0].unet
    add_unet_lora(unet, rank=2)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.3)
    return unet, get_peft_model_state_dict(unet)
