"""The miniature world, a plug-in: a procedural world, a small T2V model trained on it, its instruments and the demo.

The product never imports this package; it registers its face detector, face embedder and
`magicme demo` through `magicme.registry` (see `plugin.py`).
"""


def __getattr__(name: str) -> object:
    """magicme 0.1's `magicme.world` module names, for one release (`magicme._deprecated`)."""
    from magicme._deprecated import moved_attribute

    return moved_attribute("world", name)
