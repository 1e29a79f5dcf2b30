"""The package's shape: old import paths for one release, and modules that stay light."""

import importlib
import subprocess
import sys
import warnings

import pytest


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("magicme.noise_prior", "sample_noise_prior", "magicme.t2v.noise_prior"),
        ("magicme.config", "GenerationSettings", "magicme.settings"),
        ("magicme.tiling", "window_starts", "magicme.v2v.windows"),
        ("magicme.identity", "load_identity", "magicme.identity.files"),
        ("magicme.world", "character", "magicme.world.scenes"),
        ("magicme.world_model", "RECIPE", "magicme.world.recipe"),
    ],
)
def test_old_import_paths_work_for_one_release_with_a_warning(old: str, name: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match="is now magicme"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_an_old_module_without_the_name_says_so() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("magicme.noise_prior")
    with pytest.raises(AttributeError, match=r"module 'magicme\.noise_prior' has no attribute 'nothing'"):
        old.nothing  # noqa: B018


@pytest.mark.parametrize("module", ["magicme.v2v.tiles", "magicme.v2v.faces", "magicme.types", "magicme.io.video"])
def test_pixel_level_modules_load_no_model_library(module: str) -> None:
    code = f"import sys, {module}; print(sorted({{'diffusers', 'transformers'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
