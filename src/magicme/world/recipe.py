"""The world's recipe: every setting the demo and the world benchmarks use, in one place.

Each choice was measured on held-out identities (the benchmark that chose it is named
beside it; README: the miniature world). The demo, `benchmarks/world_table.py`,
`benchmarks/world_demo_chain.py` and `benchmarks/world_guidance.py` all read it.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from magicme.errors import SettingError
from magicme.settings import FaceSettings, GenerationSettings, TrainingSettings, UpscaleSettings
from magicme.world import scenes
from magicme.world.model import SIZE, world_model_paths


@dataclass(frozen=True)
class WorldRecipe:
    """How an identity is learned, filmed and refined on the world model."""

    name: str = "hero"  # the learned identity, used in prompts as <hero>
    num_tokens: int = 4
    masks: str = "files"  # the world's ground-truth subject masks
    training_steps: int = 300
    learning_rate: float = 5e-3
    inference_steps: int = 25
    # Of 2, 3, 5 and 7.5, the model before the group tuning drew held-out identities prompted in words
    # most recognisably at 7.5 (benchmarks/world_guidance.py). On the shipped model 3.0 does; moving
    # waits until every world figure is measured again at it (README: the miniature world, Guidance).
    guidance: float = 7.5
    # Close up: learned identities are recognised best there (benchmarks/world_demo_chain.py).
    framing: str = "close"
    # Face VCD at 0.6 redraws faces that the instrument then ranks lower, at 0.4 it keeps them
    # (world_demo_chain.py); faces it would not enlarge are left (FaceSettings.min_enlargement).
    face_strength: float = 0.4
    # Face VCD leaves identity where it was on close-ups and lowers it at medium range (choose split;
    # on the report split: neutral on 27 of 30 close-ups, no gain at medium range), so the world's
    # chain runs without it (benchmarks/world_refinement.py; README: the miniature world).
    face_vcd_in_chain: bool = False
    tile_strength: float = 0.1  # Tiled VCD's strength wherever it runs (world_demo_chain.py)
    # Tiled VCD loses identity against Lanczos alone on the choose split, so the world's chain
    # upscales with Lanczos and sharpening only (benchmarks/world_refinement.py --split choose).
    tiled_vcd_in_chain: bool = False
    # Tiled VCD windows (a tile and its overlap) are the size the model was trained at.
    tile_overlap: int = 16
    tile: int = SIZE - 16
    sharpen: float = 0.2
    # Two learned identities filmed together, left to right: bound, both are in place in more frames
    # at medium range than close up (benchmarks/world_groups.py --split choose).
    group_names: tuple[str, ...] = ("hero", "friend")
    group_framing: str = "medium"
    # Bound from the first step, a region is left with nobody in it now and then; reading the whole
    # prompt for the first 20% of steps lays out both people first. Of 0, 10, 20, 30 and 50%, 20% ranks
    # each identity in its region about best (3.93 against 5.43 from the start) with both in place more often
    # (0.37 against 0.23) (benchmarks/world_groups.py --split choose --framings medium --binding-starts ...).
    binding_start: float = 0.2

    @property
    def portrait(self) -> str:
        """The V2V prompt: each stage sees part of the frame, so it names the person, not the scene
        (naming the scene makes every Tiled VCD window redraw it)."""
        return f"{scenes.DISTANCES['close'][0]} a <{self.name}> person"

    def prompt(self, scene: str, distance: str | None = None, token: str | None = None) -> str:
        """The T2V prompt: the identity (or `token`, e.g. 'a' for nobody learned) in `scene`."""
        who = f"a <{self.name}>" if token is None else token
        return f"{scenes.DISTANCES[distance or self.framing][0]} {who} person {scenes.where(scene)}"

    def group_prompt(self, scene: str, names: tuple[str, ...] | None = None, distance: str | None = None) -> str:
        """The T2V prompt of several learned identities, named left to right, in `scene`."""
        who = " and ".join(f"a <{name}> person" for name in names or self.group_names)
        return f"{scenes.DISTANCES[distance or self.group_framing][0]} {who} {scenes.where(scene)}"

    @property
    def demo_identity(self) -> int:
        return self.demo_identities(1)[0]

    def demo_identities(self, count: int) -> tuple[int, ...]:
        """The first `count` identities of the report split photographed the way a user should: at most
        one of each one's five photos is taken from far away (a rule on the photos, not on any result)."""
        return tuple(i for i in scenes.REPORT_SPLIT if [d for _, d, _ in scenes.photo_plan(i)].count("far") <= 1)[
            :count
        ]

    def training(self, photos: Path, seed: int = 0, **changes: object) -> TrainingSettings:
        """The ID module's settings for the world's photos of an identity."""
        values = {
            "photos": str(photos),
            "name": self.name,
            "base_model": str(world_model_paths()[0]),
            "num_tokens": self.num_tokens,
            "masks": self.masks,
            "resolution": SIZE,
            "steps": self.training_steps,
            "learning_rate": self.learning_rate,
            "validation_every": 0,
            "checkpoint_every": 100,
            "device": "cpu",
            "seed": seed,
        }
        return TrainingSettings(**(values | changes))

    def generation(self, prompt: str, seed: int = 0, **changes: object) -> GenerationSettings:
        """A clip at the world model's size, steps and guidance."""
        values = {"prompt": prompt, "height": SIZE, "width": SIZE, "seed": seed} | self._sampling()
        return GenerationSettings(**(values | changes))

    def group_generation(self, prompt: str, seed: int = 0, **changes: object) -> GenerationSettings:
        """A clip of several learned identities, bound to their places from the recipe's step on."""
        return self.generation(prompt, seed, **({"binding_start": self.binding_start} | changes))

    def one_identity_record(self) -> dict[str, object]:
        """The recipe as a benchmark of single identities records it: without the settings only groups use."""
        groups = ("group_names", "group_framing", "binding_start")
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in groups}

    def face(self, seed: int = 0, **changes: object) -> FaceSettings:
        """Face VCD with the world's face locator at the model's own size."""
        values = {"prompt": self.portrait, "detector": "world", "guide_size": SIZE, "strength": self.face_strength}
        return FaceSettings(**(values | self._sampling() | {"seed": seed} | changes))

    def upscale(self, seed: int = 0, **changes: object) -> UpscaleSettings:
        """Tiled VCD 2x in windows of the model's own size."""
        values = {"prompt": self.portrait, "tile": self.tile, "overlap": self.tile_overlap}
        values |= {"strength": self.tile_strength, "sharpen": self.sharpen}
        return UpscaleSettings(**(values | self._sampling() | {"seed": seed} | changes))

    def chain_upscale(self, seed: int = 0) -> UpscaleSettings:
        """The chain's 2x upscale: Tiled VCD, or Lanczos and sharpening only (strength 0) while it does not help."""
        return self.upscale(seed, strength=self.tile_strength if self.tiled_vcd_in_chain else 0.0)

    def batch_manifest(
        self, photos: Path, identities: int = 3, training_steps: int = 100, inference_steps: int | None = None
    ) -> dict[str, object]:
        """A `magicme batch` manifest without its `output_dir`: the first `identities` of the report
        split, each learned from its five photos (written under `photos`), x 2 prompts x 2 seeds;
        each clip T2V, Face VCD with the world's face locator, then `magicme eval` with the world's
        identity instrument as its face model."""
        people = {}
        for identity in reporting_split(identities):
            folder = photos / f"photos-{identity}"
            scenes.write_identity_photos(folder, identity)
            people[f"id{identity}"] = {"photos": str(folder), "class_word": "person"}
        base, motion = world_model_paths()
        sampling = self._sampling() | ({} if inference_steps is None else {"num_inference_steps": inference_steps})
        training = {"masks": self.masks, "num_tokens": self.num_tokens, "resolution": SIZE, "steps": training_steps}
        face = {"detector": "world", "guide_size": SIZE, "strength": self.face_strength}
        return {
            "model": {"base_model": str(base), "motion_adapter": str(motion), "device": "cpu"},
            "identities": people,
            "prompts": ["a close up photo of {identity} on the grass", "a close up photo of {identity} in the snow"],
            "seeds": [0, 1],
            "training": training | {"learning_rate": self.learning_rate, "validation_every": 0, "device": "cpu"},
            "generation": {"height": SIZE, "width": SIZE} | sampling,
            "refine_face": face | sampling,
            "evaluation": {"clip_model": "none", "dino_model": "none", "face_model": "world"},
        }

    def _sampling(self) -> dict[str, object]:
        return {"num_inference_steps": self.inference_steps, "guidance_scale": self.guidance}


RECIPE = WorldRecipe()


def choosing_split(count: int) -> tuple[int, ...]:
    """The first `count` identities of the split settings are chosen on; asking for more is refused,
    because choosing on the report split would make its figures show tuning, not the method."""
    if not 1 <= count <= len(scenes.CHOOSE_SPLIT):
        raise SettingError(
            "identities",
            f"settings are chosen on at most {len(scenes.CHOOSE_SPLIT)} identities "
            f"({scenes.CHOOSE_SPLIT[0]} to {scenes.CHOOSE_SPLIT[-1]}), got {count}",
        )
    return scenes.CHOOSE_SPLIT[:count]


def reporting_split(count: int) -> tuple[int, ...]:
    """The first `count` identities of the split every table and the demo report on."""
    if not 1 <= count <= len(scenes.REPORT_SPLIT):
        raise SettingError("identities", f"the report split has {len(scenes.REPORT_SPLIT)} identities, got {count}")
    return scenes.REPORT_SPLIT[:count]
