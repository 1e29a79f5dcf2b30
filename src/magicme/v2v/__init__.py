"""V2V VCD (Magic-Me section 3.3): Face VCD, Tiled VCD and identity editing on one video-to-video denoiser."""


def __getattr__(name: str) -> object:
    """magicme 0.1's `magicme.v2v` module names, for one release (`magicme._deprecated`)."""
    from magicme._deprecated import moved_attribute

    return moved_attribute("v2v", name)
