"""Prompt schedules for prompt travel: "0: a <alice> woman walking | 8: ... running".

A schedule maps keyframes to prompts; diffusers interpolates the text embeddings linearly
between keyframes, so every frame gets its own conditioning.
"""

import re

KEYFRAME = re.compile(r"^\s*(\d+)\s*:\s*(.*\S)\s*$", re.DOTALL)


def parse_prompt_schedule(prompt: str, num_frames: int) -> dict[int, str] | None:
    """Parse a keyframe schedule separated by '|' or newlines; None for a plain prompt.

    A prompt is a schedule when every entry starts with "FRAME:". Keyframes must be
    distinct, start at 0 and lie inside the clip.
    """
    entries = [entry for entry in re.split(r"[|\n]", prompt) if entry.strip()]
    matches = [KEYFRAME.match(entry) for entry in entries]
    if not entries or not all(matches):
        if any(matches):
            raise ValueError(
                "a prompt schedule needs 'FRAME: prompt' in every entry, e.g. '0: a cat sitting | 8: a cat running'"
            )
        return None
    schedule: dict[int, str] = {}
    for match in matches:
        frame, text = int(match.group(1)), match.group(2)
        if frame in schedule:
            raise ValueError(f"prompt schedule names frame {frame} twice")
        if frame >= num_frames:
            raise ValueError(f"prompt schedule keyframe {frame} is outside the clip's {num_frames} frames")
        schedule[frame] = text
    if 0 not in schedule:
        raise ValueError("a prompt schedule must start at frame 0, e.g. '0: ... | 8: ...'")
    return dict(sorted(schedule.items()))
