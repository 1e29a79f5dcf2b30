"""magicme: identity-specific video generation (Video Custom Diffusion, Magic-Me).

The Python API in a few names; heavy modules load on first use so `import magicme` is quick:

    import magicme
    pipe = magicme.load_pipeline(magicme.ModelSettings(identities=["alice.safetensors"]))
    frames = magicme.generate(pipe, magicme.GenerationSettings(prompt="a photo of <alice> woman"))
    magicme.save_video(frames, "alice.mp4")

    magicme.train_identity(magicme.TrainingSettings(photos="photos/alice", name="alice", class_word="woman"))
"""

from importlib import import_module
from typing import Any

from magicme.config import GenerationSettings, ModelSettings, TrainingSettings

__all__ = [
    "GenerationSettings",
    "Identity",
    "ModelSettings",
    "TrainingSettings",
    "generate",
    "load_identity",
    "load_pipeline",
    "render",
    "sample_noise_prior",
    "save_identity",
    "save_video",
    "train_identity",
]

_LAZY = {
    "Identity": "magicme.identity",
    "load_identity": "magicme.identity",
    "save_identity": "magicme.identity",
    "generate": "magicme.generation",
    "load_pipeline": "magicme.loading",
    "render": "magicme.render",
    "sample_noise_prior": "magicme.noise_prior",
    "save_video": "magicme.video_io",
    "train_identity": "magicme.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'magicme' has no attribute {name!r}")
