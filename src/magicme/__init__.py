"""magicme: identity-specific video generation (Video Custom Diffusion, Magic-Me).

The Python API in a few names; heavy modules load on first use so `import magicme` is quick:

    import magicme
    pipe = magicme.load_pipeline(magicme.ModelSettings(identities=["alice.safetensors"]))
    frames = magicme.generate(pipe, magicme.GenerationSettings(prompt="a photo of <alice> woman"))
    magicme.save_video(frames, "alice.mp4")

    magicme.train_identity(magicme.TrainingSettings(photos="photos/alice", name="alice", class_word="woman"))
    magicme.train_identities([alice, bob])  # several TrainingSettings on one model, one UNet call per step
"""

from importlib import import_module
from typing import Any

from magicme import _deprecated, quiet

quiet.install()
_deprecated.install()

from magicme.settings import GenerationSettings, ModelSettings, TrainingSettings  # noqa: E402

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
    "train_identities",
    "train_identity",
    "with_preset",
]

_LAZY = {
    "Identity": "magicme.identity.files",
    "load_identity": "magicme.identity.files",
    "save_identity": "magicme.identity.files",
    "generate": "magicme.t2v.generate",
    "load_pipeline": "magicme.models.loading",
    "render": "magicme.t2v.generate",
    "sample_noise_prior": "magicme.t2v.noise_prior",
    "save_video": "magicme.io.video",
    "train_identities": "magicme.identity.train",
    "train_identity": "magicme.identity.train",
    "with_preset": "magicme.models.presets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'magicme' has no attribute {name!r}")
