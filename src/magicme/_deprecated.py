"""The flat import paths of magicme 0.1 (`magicme.noise_prior`, `magicme.config`, ...), kept for one release.

Importing one gives a module whose names come from where they live now, with a
DeprecationWarning naming the new place. Where an old module's name is a package now
(`magicme.identity`, `magicme.v2v`, `magicme.world`), the package looks its old names up
here. The README's module map shows the new tree.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

MOVED: dict[str, tuple[str, ...]] = {
    "config": ("magicme.settings",),
    "files": ("magicme.io.files",),
    "video_io": ("magicme.io.video",),
    "render": ("magicme.t2v.generate", "magicme.io.sidecar"),
    "loading": ("magicme.models.loading", "magicme.models.schedulers"),
    "identity": ("magicme.identity.files",),
    "photos": ("magicme.identity.photos",),
    "masks": ("magicme.identity.masks",),
    "augment": ("magicme.identity.augment",),
    "training": ("magicme.identity.train",),
    "checkpoints": ("magicme.identity.checkpoints",),
    "noise_prior": ("magicme.t2v.noise_prior",),
    "prompts": ("magicme.t2v.prompts",),
    "generation": ("magicme.t2v.generate",),
    "v2v": ("magicme.v2v.denoiser",),
    "faces": ("magicme.v2v.faces", "magicme.detection", "magicme.types"),
    "tiling": ("magicme.v2v.tiles", "magicme.v2v.windows"),
    "stages": ("magicme.v2v.jobs", "magicme.v2v.windows", "magicme.io.video"),
    "metrics": ("magicme.eval.metrics",),
    "encoders": ("magicme.eval.encoders",),
    "evaluation": ("magicme.eval.evaluate",),
    "protocol": ("magicme.eval.protocol",),
    "world": ("magicme.world.scenes",),
    "world_model": ("magicme.world.model", "magicme.world.recipe"),
    "world_training": ("magicme.world.train",),
    "instruments": ("magicme.world.instruments",),
    "instrument_accuracy": ("magicme.world.accuracy", "magicme.detection"),
    "demo": ("magicme.world.demo",),
    "tiny": ("magicme.testing.tiny",),
}


def moved_attribute(old: str, name: str) -> Any:
    """`name` of the old module `magicme.<old>`, from wherever it lives now."""
    for new in MOVED[old]:
        module = importlib.import_module(new)
        if hasattr(module, name):
            warnings.warn(
                f"magicme.{old}.{name} is now {new}.{name}; the old path will be removed in the next release",
                DeprecationWarning,
                stacklevel=3,
            )
            return getattr(module, name)
    raise AttributeError(f"module 'magicme.{old}' has no attribute {name!r}")


class _MovedModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return moved_attribute(self.__name__.removeprefix("magicme."), name)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `magicme.<old>` only where no real module or package has that name (it runs last)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.partition(".")
        if package == "magicme" and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = " and ".join(MOVED[module.__name__.removeprefix("magicme.")])
        warnings.warn(f"{module.__name__} is now {new}", DeprecationWarning, stacklevel=2)


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
