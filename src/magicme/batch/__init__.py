"""Batches: a manifest of identities x prompts x seeds, run as jobs by one worker or several."""
