"""`magicme eval`: the paper's identity, prompt and temporal metrics, their encoders, and benchmark protocols."""
