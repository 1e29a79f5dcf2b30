"""magicme studio: the VCD workflow in a web page (`magicme studio`, extra `magicme[studio]`).

`workspace` keeps identities and renders in one folder, `jobs` runs the CLI's functions for
the page's buttons, `app` is the Gradio page. Only `app` imports Gradio.
"""

import os
from pathlib import Path


def prepare_environment(workspace: Path) -> None:
    """Settings Gradio reads when imported: call before importing `magicme.studio.app`.

    Uploads and the copies Gradio serves live in the workspace (so nothing outside it is
    served), and Gradio reports nothing anywhere (the studio works offline).
    """
    os.environ["GRADIO_TEMP_DIR"] = str(Path(workspace).resolve() / ".uploads")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
