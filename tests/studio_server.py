"""A `magicme studio` server for tests: started as a user starts it, on 127.0.0.1 and a free port."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from magicme.world import scenes

IDENTITY = 1010  # a held-out identity of the world's report split


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def studio(workspace: Path, *options: str) -> Iterator[str]:
    """Serve the studio on `workspace` until the block ends; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "magicme", "studio", "--workspace", str(workspace), "--port", str(port), *options]
    log = (workspace.parent / f"studio-{port}.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the studio did not start: {Path(log.name).read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def world_photos(folder: Path) -> list[Path]:
    """Five photos of a held-out world identity, with their ground-truth masks (`*.mask.png`)."""
    scenes.write_identity_photos(folder, IDENTITY)
    return sorted(folder.iterdir())
