"""Tiny, randomly initialised models for tests and examples: the real classes at toy sizes."""
