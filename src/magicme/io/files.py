"""Writing outputs atomically, so a crash or a full disk never leaves a half-written file."""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary path beside `path` (same suffix) and move it into place on success.

    The temporary keeps the suffix because writers such as ffmpeg pick the format from it.
    On any error the temporary is removed and the previous file at `path`, if any, is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield str(partial)
        os.replace(partial, path)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write JSON atomically, readable by people (indented) and by `--config`."""
    with atomic_path(path) as partial:
        Path(partial).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path
