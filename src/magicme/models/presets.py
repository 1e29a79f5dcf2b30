"""Speed presets: few-step distilled motion with the sampler, steps and guidance it was made for.

Each preset is set in one place here and applied to every stage alike, T2V and the V2V
stages (Face VCD, Tiled VCD, editing), so a chain runs on one set of weights at few steps.
- `lightning-4`, `lightning-8`: AnimateDiff-Lightning's motion module distilled for 4 or 8
  steps, Euler on trailing timesteps, guidance 1.0 (no classifier-free guidance pass, half
  the UNet work of every step).
- `lcm`: AnimateLCM's motion module and its LoRA at 0.8, the LCM sampler, 6 steps, guidance 2.

Values the user sets win over the preset's (`apply_preset`), so `--preset lightning-4
--motion-adapter my/lightning.safetensors` reads the file the user has. A V2V stage of
`strength` s runs only s x steps of its schedule, so its steps are raised until one is left.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from magicme.errors import SettingError
from magicme.settings import ModelSettings, VideoToVideoSettings

LIGHTNING = "https://huggingface.co/ByteDance/AnimateDiff-Lightning/blob/main/animatediff_lightning_{steps}step_diffusers.safetensors"
ANIMATELCM = "wangfuyun/AnimateLCM"
ANIMATELCM_LORA = "https://huggingface.co/wangfuyun/AnimateLCM/blob/main/AnimateLCM_sd15_t2v_lora.safetensors"
T = TypeVar("T")


@dataclass(frozen=True)
class SpeedPreset:
    """Weights and sampling that belong together: the motion module was distilled for this sampler."""

    summary: str
    motion_adapter: str
    scheduler: str
    steps: int
    guidance: float
    lora: str | None = None
    lora_scale: float = 1.0

    def model_values(self) -> dict[str, Any]:
        lora = {"lora": self.lora, "lora_scale": self.lora_scale} if self.lora else {}
        return {"motion_adapter": self.motion_adapter} | lora

    def sampling_values(self, strength: float | None = None) -> dict[str, Any]:
        """Sampler, steps and guidance; for a V2V stage of `strength`, enough steps to leave one."""
        steps = self.steps
        while strength is not None and int(steps * strength) < 1:  # the V2V stages' own rule
            steps += 1
        return {"scheduler": self.scheduler, "num_inference_steps": steps, "guidance_scale": self.guidance}


PRESETS = {
    "lightning-4": SpeedPreset(
        "AnimateDiff-Lightning 4-step: Euler (trailing), 4 steps, guidance 1",
        LIGHTNING.format(steps=4),
        "euler-trailing",
        4,
        1.0,
    ),
    "lightning-8": SpeedPreset(
        "AnimateDiff-Lightning 8-step: Euler (trailing), 8 steps, guidance 1",
        LIGHTNING.format(steps=8),
        "euler-trailing",
        8,
        1.0,
    ),
    "lcm": SpeedPreset(
        "AnimateLCM: its motion module and LoRA at 0.8, LCM sampler, 6 steps, guidance 2",
        ANIMATELCM,
        "lcm",
        6,
        2.0,
        lora=ANIMATELCM_LORA,
        lora_scale=0.8,
    ),
}
SAMPLING_SECTIONS = ("generation", "refine_face", "upscale", "edit")


def speed_preset(name: str) -> SpeedPreset:
    if name not in PRESETS:
        raise SettingError("preset", f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def apply_preset(record: dict[str, Any], name: str | None, sections: dict[str, type]) -> dict[str, Any]:
    """A config record (section -> values) with the preset's values wherever the record leaves them
    unset; `sections`: each section's settings class, whose default strength a V2V section may keep."""
    if name is None:
        return record
    preset = speed_preset(name)
    filled = dict(record)
    filled["model"] = preset.model_values() | (record.get("model") or {})
    for section in SAMPLING_SECTIONS:
        if section in record:
            values = record[section] or {}
            strength = values.get("strength", getattr(sections.get(section), "strength", None))
            filled[section] = preset.sampling_values(strength) | values
    return filled


def with_preset(settings: T, name: str) -> T:
    """Settings (model, T2V or a V2V stage's) with every value the preset sets, for the Python API."""
    preset = speed_preset(name)
    if isinstance(settings, ModelSettings):
        return dataclasses.replace(settings, **preset.model_values())
    strength = settings.strength if isinstance(settings, VideoToVideoSettings) else None
    return dataclasses.replace(settings, **preset.sampling_values(strength))
