from pathlib import Path

import pytest

from magicme.cli import build_parser

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    head = README[:600]
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("command", ["generate", "train", "refine-face", "upscale", "edit", "eval"])
def test_readme_documents_every_option(command: str) -> None:
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    options = {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")}
    missing = sorted(option for option in options if f"`{option}`" not in README and option != "--help")
    assert not missing, f"README lacks {missing}"


def test_every_test_the_readme_names_exists() -> None:
    """The compatibility table cites a test per row: each must exist, or the row claims nothing."""
    import re

    sources = "".join(path.read_text() for path in (Path(__file__).parent).glob("test_*.py"))
    named = set(re.findall(r"`(?:tests/\w+\.py::)?(test_\w+)`", README))
    assert named and not sorted(name for name in named if f"def {name}(" not in sources)
