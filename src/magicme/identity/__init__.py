"""VCD's ID module (Magic-Me section 3.1): photos, subject masks, augmentation, training, identity files."""


def __getattr__(name: str) -> object:
    """magicme 0.1's `magicme.identity` module names, for one release (`magicme._deprecated`)."""
    from magicme._deprecated import moved_attribute

    return moved_attribute("identity", name)
