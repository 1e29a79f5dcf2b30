"""Files on disk: atomic writes, videos, and the JSON sidecars that reproduce an output."""
