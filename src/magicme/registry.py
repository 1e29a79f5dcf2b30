"""Named face detectors, face embedders, extra CLI commands and model presets, open to plug-ins.

The built-ins are registered here as factories that import their module only when used.
A plug-in is an installed package with a `magicme.plugins` entry point: a function that
registers its own entries. The miniature world is one, so the product never imports it,
yet `--detector world`, `--face-model world`, `magicme demo` and the studio's default model
work when it is installed.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from magicme.types import FaceDetector, FaceEmbedder

PLUGIN_GROUP = "magicme.plugins"


@dataclass(frozen=True)
class Command:
    """A `magicme NAME` subcommand a plug-in adds: its help, its options and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


@dataclass(frozen=True)
class ModelPreset:
    """Weights the studio offers ready-made, with the settings that suit them (section -> values)."""

    label: str
    model: dict[str, Any]  # ModelSettings fields
    training: dict[str, Any] = field(default_factory=dict)  # TrainingSettings fields but photos, name
    generation: dict[str, Any] = field(default_factory=dict)
    refine_face: dict[str, Any] = field(default_factory=dict)
    face_vcd: bool = True  # whether the studio's "+ Face VCD" starts checked
    upscale: dict[str, Any] = field(default_factory=dict)
    face_model: str = "dlib"  # what scores identity in the studio's metrics


def _imported(target: str) -> Any:
    """`module:name`, imported when first used: registering a built-in loads none of its libraries."""
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


_FACE_DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "opencv": lambda: _imported("magicme.detection:opencv_face_detector"),
}
_FACE_EMBEDDERS: dict[str, Callable[[str], FaceEmbedder | None]] = {
    "dlib": lambda device: _imported("magicme.eval.encoders:dlib_face_embedder")(),
    "insightface": lambda device: _imported("magicme.eval.encoders:insightface_embedder")(device),
    "none": lambda device: None,
}
_COMMANDS: dict[str, Command] = {}
_MODEL_PRESETS: dict[str, Callable[[], ModelPreset]] = {}


def add_face_detector(name: str, factory: Callable[[], FaceDetector]) -> None:
    _FACE_DETECTORS[name] = factory


def add_face_embedder(name: str, factory: Callable[[str], FaceEmbedder | None]) -> None:
    """`factory(device)` builds the embedder; it may return None for 'no face similarity'."""
    _FACE_EMBEDDERS[name] = factory


def add_command(name: str, command: Command) -> None:
    _COMMANDS[name] = command


def add_model_preset(name: str, factory: Callable[[], ModelPreset]) -> None:
    _MODEL_PRESETS[name] = factory


@cache
def load_plugins() -> None:
    """Let every installed plug-in register its entries, once per process."""
    for entry_point in entry_points(group=PLUGIN_GROUP):
        entry_point.load()()


def face_detector_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(_FACE_DETECTORS)


def face_embedder_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(_FACE_EMBEDDERS)


def commands() -> dict[str, Command]:
    load_plugins()
    return dict(_COMMANDS)


def face_detector(name: str) -> FaceDetector:
    if name not in face_detector_names():
        raise ValueError(f"unknown face detector {name!r}; choose one of {face_detector_names()}")
    return _FACE_DETECTORS[name]()


def face_embedder(name: str, device: str = "cpu") -> FaceEmbedder | None:
    if name not in face_embedder_names():
        raise ValueError(f"unknown face model {name!r}; choose one of {face_embedder_names()}")
    return _FACE_EMBEDDERS[name](device)


def model_preset_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(_MODEL_PRESETS)


def model_preset(name: str) -> ModelPreset:
    if name not in model_preset_names():
        raise ValueError(f"unknown model preset {name!r}; choose one of {model_preset_names()}")
    return _MODEL_PRESETS[name]()
