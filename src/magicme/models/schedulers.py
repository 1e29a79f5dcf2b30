"""The samplers VCD is used with, configured as AnimateDiff recommends (linear betas).

`euler-trailing` and `lcm` are the few-step samplers of the speed presets: Euler on
"trailing" timesteps for AnimateDiff-Lightning, the consistency sampler for AnimateLCM.
"""

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from magicme.errors import SettingError
from magicme.settings import SCHEDULERS


def make_scheduler(name: str, config: dict) -> SchedulerMixin:
    """The sampler `name` on a model's scheduler `config`."""
    if name not in SCHEDULERS:
        raise SettingError("scheduler", f"unknown sampler {name!r}; choose one of {SCHEDULERS}")
    common = {"beta_schedule": "linear", "timestep_spacing": "linspace", "steps_offset": 1}
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, **common)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config, **common)
    if name == "euler-trailing":  # starts at the last training timestep, as Lightning was distilled
        return EulerDiscreteScheduler.from_config(config, beta_schedule="linear", timestep_spacing="trailing")
    if name == "lcm":
        return LCMScheduler.from_config(config, beta_schedule="linear", timestep_spacing="leading", steps_offset=0)
    if name == "euler-ancestral":
        return EulerAncestralDiscreteScheduler.from_config(config, **common)
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", use_karras_sigmas=True, **common
    )
