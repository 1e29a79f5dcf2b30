"""Warnings from the libraries underneath that tell a magicme user nothing, filtered where they arise.

Installed by `import magicme`, before any of those libraries is imported.
- transformers names every image processor that falls back to its PIL version because
  torchvision is absent; magicme never needs torchvision, so the fallback is what we want.
- diffusers 0.42 warns at every `.to(dtype)` that modules must stay in fp32, even when none must ("[]").
"""

import logging


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def install() -> None:
    torchvision = _DropMessages("requires torchvision (not installed)")
    logging.getLogger("transformers.utils.import_utils").addFilter(torchvision)
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropMessages("kept in float32: []"))
