"""Typed settings for every magicme job: one source for the CLI, config files and sidecars.

Each field carries its help text in `metadata["help"]`; the CLI builds its options from
these dataclasses, and every output's JSON sidecar is `dataclasses.asdict` of them.
"""

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from magicme import registry

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
SCHEDULERS = ("ddim", "euler", "euler-ancestral", "dpmpp-2m-karras", "euler-trailing", "lcm")  # the last two: presets
DTYPES = ("auto", "fp32", "fp16", "bf16")
FREEU_SPEC = {"s1": 0.9, "s2": 0.4, "b1": 1.1, "b2": 1.2}  # the reference workflow's values
REGIONS_HELP = (
    "where an identity acts, one per identity: NAME=PLACE (left, right, center, top, bottom, left-third, "
    "middle-third, right-third, full), NAME=x0,y0,x1,y1 (fractions of the frame) or NAME=MASK_IMAGE"
)


def _help(text: str, choices: tuple[str, ...] | None = None, plugins: bool = False, **kwargs: Any) -> Any:
    """A field with its help text and choices; `plugins`: choices that plug-ins may add to after import."""
    return field(metadata={"help": text, "choices": choices, "plugins": plugins}, **kwargs)


@dataclass
class ModelSettings:
    """Which weights to load and how to place them on the device."""

    base_model: str = _help(
        "SD-1.5-family weights: a hub id, a local diffusers folder, or a single .safetensors/.ckpt file",
        default=DEFAULT_BASE_MODEL,
    )
    motion_adapter: str = _help(
        "AnimateDiff motion module: a hub id, a local folder, or a single file (e.g. mm_sd_v15_v2.ckpt)",
        default=DEFAULT_MOTION_ADAPTER,
    )
    motion_lora: str | None = _help(
        "optional AnimateDiff motion LoRA (hub id, folder or file; the original `v2_lora_*.ckpt` files are renamed "
        "on load), e.g. guoyww/animatediff-motion-lora-zoom-in",
        default=None,
    )
    motion_lora_scale: float = _help("weight of the motion LoRA (reference: 0.6)", default=0.6)
    lora: str | None = _help(
        "optional SD-1.5 LoRA over the image model (hub id, folder or file, diffusers or kohya layout), "
        "e.g. AnimateLCM's, which `--preset lcm` sets",
        default=None,
    )
    lora_scale: float = _help("weight of that LoRA (AnimateLCM's: 0.8)", default=1.0)
    identities: list[str] = _help(
        "identity files to load: PATH or NAME=PATH, magicme .safetensors or A1111 .pt; use one in a prompt as <NAME>",
        default_factory=list,
    )
    device: str = _help("torch device: auto picks cuda, then mps, then cpu", default="auto")
    dtype: str = _help("weights dtype; auto is fp16 on cuda, fp32 elsewhere", choices=DTYPES, default="auto")
    cpu_offload: bool = _help("keep models on the CPU until used (saves GPU memory, slower)", default=False)
    vae_slicing: bool = _help(
        "run the VAE one frame at a time, the least memory (default: on a GPU as many frames per call as the "
        "free memory holds; on the CPU one, measured fastest there)",
        default=False,
    )
    vae_tiling: bool = _help("decode the VAE in tiles (saves memory for large frames)", default=False)
    compile_unet: bool = _help("torch.compile the UNet (slow first call, faster after; best on GPU)", default=False)


@dataclass
class GenerationSettings:
    """What to render: prompt, size, sampler and the VCD noise prior."""

    prompt: str = _help(
        "text prompt; name identities as <NAME>; prompt travel: '0: a <alice> woman walking | 8: ... running'",
        default="",
    )
    negative_prompt: str = _help("what to steer away from", default="")
    num_frames: int = _help("frames in the clip", default=16)
    height: int = _help("height in pixels, a multiple of 8", default=512)
    width: int = _help("width in pixels, a multiple of 8", default=512)
    num_inference_steps: int = _help("denoising steps", default=25)
    guidance_scale: float = _help("classifier-free guidance scale", default=7.5)
    gamma: float = _help(
        "3D noise prior correlation in [0, 1): 0 is i.i.d. noise; 0.1 is the paper's best; 0.2 freezes motion",
        default=0.1,
    )
    seed: int = _help("random seed; the same seed and settings give the same video (-1: a random one)", default=0)
    scheduler: str = _help("sampler", choices=SCHEDULERS, default="ddim")
    freeu: bool = _help("FreeU with the reference values b1 1.1, b2 1.2, s1 0.9, s2 0.4", default=False)
    free_init: bool = _help("diffusers' FreeInit (costs one full sampling pass per iteration)", default=False)
    free_init_iters: int = _help("FreeInit iterations", default=3)
    free_noise: bool = _help(
        "diffusers' FreeNoise sliding windows, for clips longer than the motion window", default=False
    )
    free_noise_context: int = _help("FreeNoise window length in frames", default=16)
    free_noise_stride: int = _help("FreeNoise window stride in frames", default=4)
    fps: int = _help("frames per second of the written video", default=8)
    regions: list[str] = _help(REGIONS_HELP, default_factory=list)
    layout: str = _help(
        "a layout JSON file (boxes, masks, box tracks, region prompts), or `shared` for no regions: every "
        "identity's tokens act everywhere. Default: a prompt naming several identities places them side by side",
        default="",
    )
    binding_start: float = _help(
        "the share of sampling steps, at the start, that read the whole prompt everywhere before each region "
        "reads its own: the layout forms with every subject in it (0: bound from the first step)",
        default=0.0,
    )


T = TypeVar("T")


def from_mapping(cls: type[T], values: dict[str, Any], source: str) -> T:
    """Build a settings dataclass, refusing unknown keys and values of the wrong type (a config
    file's `num_frames: "16"`), so mistakes cannot pass silently or fail deep inside a job."""
    hints = {name: kind for name, kind in typing.get_type_hints(cls).items() if name in _field_names(cls)}
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(hints)}")
    for name, value in values.items():
        if not _has_type(value, hints[name]):
            kind = hints[name]
            options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
            expected = " or ".join(map(_type_name, options))
            raise ValueError(f"{source}: `{name}` must be {expected}, got {value!r} ({_type_name(type(value))})")
        choices = _field_choices(cls).get(name)
        if choices and value not in choices:
            raise ValueError(f"{source}: `{name}` must be one of {', '.join(choices)}; got {value!r}")
    return cls(**values)


def _field_choices(cls: type) -> dict[str, tuple[str, ...]]:
    """The fixed choices of each field (those plug-ins extend are checked where they are used)."""
    return {
        spec.name: spec.metadata.get("choices") for spec in dataclasses.fields(cls) if not spec.metadata.get("plugins")
    }


def _field_names(cls: type) -> set[str]:
    return {spec.name for spec in dataclasses.fields(cls)}


def _has_type(value: Any, kind: Any) -> bool:
    """`value` fits the field type `kind` (int for float fields too; never bool for numbers)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_has_type(item, typing.get_args(kind)[0]) for item in value)
    if kind is type(None):
        return value is None
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def _type_name(kind: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false", type(None): "none"}
    return names.get(
        kind, "a list of text" if typing.get_origin(kind) is list else getattr(kind, "__name__", str(kind))
    )


def settings_from_record(record: dict[str, Any], sections: dict[str, type], source: str) -> dict[str, Any]:
    """Settings objects from a mapping of sections (a config file, a sidecar, or parsed options).

    A sidecar's `record` section (what happened, not what to do) is ignored.
    """
    unknown = sorted(set(record) - {*sections, "record"})
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(sections)}")
    return {name: from_mapping(cls, record.get(name, {}), f"{source} [{name}]") for name, cls in sections.items()}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML settings file (a sidecar written by magicme is one), or the settings an mp4 or
    webm that magicme wrote carries in its metadata."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix in (".mp4", ".webm"):
        from magicme.io.video import read_comment

        text = read_comment(path) or ""
        if not text.startswith("{"):
            raise ValueError(f"{path} carries no magicme settings (was it written by magicme?)")
    else:
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    return data


MASK_BACKENDS = ("grounded-sam", "clipseg", "offline", "files", "none")
AUGMENTATIONS = ("paper", "flip", "none")  # magicme.identity.augment
PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainingSettings:
    """How an identity is learned (VCD's ID module); defaults are the reference's."""

    photos: str = _help(
        "folder of 3 to 20 photos of the subject (masks may sit beside them as NAME.mask.png)", default=""
    )
    name: str = _help("identity name, used in prompts as <NAME>", default="")
    class_word: str = _help("what the subject is: woman, man, person, dog, cat, toy ...", default="person")
    base_model: str = _help("SD-1.5-family weights to learn on (hub id, folder or file)", default=DEFAULT_BASE_MODEL)
    output_dir: str | None = _help("run folder (default: runs/NAME)", default=None)
    num_tokens: int = _help("K, the number of learned tokens (VCD's extended ID tokens)", default=4)
    init_words: list[str] = _help(
        "words whose embeddings start the K tokens, repeatable (default: the class word, face, person, photo)",
        default_factory=list,
    )
    masks: str = _help("where subject masks come from", choices=MASK_BACKENDS, default="grounded-sam")
    mask_prompt: str | None = _help("what to segment (default: the class word)", default=None)
    mask_models: list[str] = _help(
        "override the mask models (hub ids or folders): GroundingDINO then SAM, or one CLIPSeg", default_factory=list
    )
    whole_image_rate: float = _help("chance a sample trains on the whole photo, not the mask", default=0.05)
    augment: str = _help(
        "paper: flip, rotation and zoom in or out with captions to match (the VAE encodes every sample again "
        "at every step); flip: mirror only; none: the centre square (flip and none encode each photo view once)",
        choices=AUGMENTATIONS,
        default="paper",
    )
    resolution: int = _help("training size in pixels", default=512)
    steps: int = _help("optimisation steps", default=400)
    batch_size: int = _help("photos per step", default=4)
    learning_rate: float = _help("AdamW learning rate", default=1e-3)
    noise_offset: float = _help("noise offset (helps very dark or bright photos)", default=0.1)
    max_grad_norm: float = _help("gradient clipping", default=1.0)
    seed: int = _help(
        "random seed: the same seed, photos and settings give the same identity (-1: a random one)", default=0
    )
    mixed_precision: str = _help("auto is fp16 on CUDA, none elsewhere", choices=PRECISIONS, default="auto")
    gradient_checkpointing: bool = _help("trade compute for memory in the UNet", default=False)
    checkpoint_every: int = _help("save a resumable checkpoint every N steps", default=100)
    validation_every: int = _help("render preview stills every N steps (0: never)", default=100)
    validation_prompts: list[str] = _help(
        "preview prompts, repeatable, with <NAME> (default: one portrait prompt)", default_factory=list
    )
    validation_motion_adapter: str | None = _help(
        "also preview a short clip per prompt through T2V VCD with this motion adapter (id, folder or file)",
        default=None,
    )
    lora_rank: int = _help("also train a LoRA of this rank on the UNet attention (0: off; beyond the paper)", default=0)
    lora_learning_rate: float = _help("AdamW learning rate of that LoRA", default=1e-4)
    resume: bool = _help("continue from the run folder's last checkpoint", default=False)
    device: str = _help("torch device: auto picks cuda, then mps, then cpu", default="auto")


EDIT_METHODS = ("sdedit", "ddim-inversion")


@dataclass
class VideoToVideoSettings:
    """What every V2V stage shares: how it re-noises a clip from the 3D prior and denoises it with a prompt."""

    stage: ClassVar[str] = "video-to-video"  # its name on progress bars

    prompt: str = _help("identity prompt, e.g. 'a photo of <alice> woman'", default="")
    negative_prompt: str = _help("what to steer away from", default="")
    strength: float = _help("how far to re-noise: 0 keeps the clip, 1 redraws it", default=0.5)
    num_inference_steps: int = _help("denoising steps (before strength)", default=20)
    guidance_scale: float = _help("classifier-free guidance scale", default=8.0)
    scheduler: str = _help("sampler", choices=SCHEDULERS, default="ddim")
    gamma: float = _help(
        "3D noise prior correlation of the re-noising, in [0, 1), as in T2V (0: independent frames)", default=0.1
    )
    seed: int = _help(
        "random seed: draws the clip's one noise field, shared by every tile, face and window (-1: a random one)",
        default=0,
    )
    crop_batch: int = _help(
        "tiles, face crops or edit windows denoised per UNet call: more keep a GPU busier, "
        "each one more costs one more crop's activations (1: least memory)",
        default=1,
    )
    fps: int = _help("frames per second of the written video", default=8)


@dataclass
class FaceSettings(VideoToVideoSettings):
    """Face VCD: re-denoise the face region large, with the identity prompt (Magic-Me, section 3.3)."""

    stage: ClassVar[str] = "Face VCD"

    prompt: str = _help(
        "identity prompt for the face, e.g. 'a close up photo of <alice> woman, detailed face'", default=""
    )
    strength: float = _help("how far to re-noise the face (reference: 0.8)", default=0.8)
    detector: str = _help(
        "face detector: opencv (Haar cascade), or one a plug-in adds (world: the miniature world's locator)",
        choices=registry.face_detector_names(),
        plugins=True,
        default="opencv",
    )
    crop_factor: float = _help("context around the face: the crop is this many face sizes wide", default=3.0)
    guide_size: int = _help("the crop is denoised at this size (a multiple of 8)", default=512)
    feather: int = _help("blend width in pixels at the crop's edge", default=5)
    largest_only: bool = _help("refine only the largest face (default: every face)", default=False)
    min_enlargement: float = _help(
        "leave faces whose crop is enlarged less than this to reach the guide size (1: refine every face)",
        default=1.2,
    )
    regions: list[str] = _help(
        f"{REGIONS_HELP}; each face is refined as the identity whose region it overlaps most, with {{identity}} "
        "in the prompt replaced by that identity's <NAME> and class word (a face in no region is left)",
        default_factory=list,
    )
    layout: str = _help("a layout JSON file, as `generate --layout` takes, for the same matching", default="")
    references: list[str] = _help(
        "with several identities: NAME=PHOTO_FOLDER, one per identity; each face is refined as the identity "
        "whose photos it resembles most (by --face-model), and by --region where the model finds no face",
        default_factory=list,
    )
    face_model: str = _help(
        "face embedder for --reference (dlib needs magicme[eval]; world: the miniature world's)",
        choices=registry.face_embedder_names(),
        plugins=True,
        default="dlib",
    )


@dataclass
class UpscaleSettings(VideoToVideoSettings):
    """Tiled VCD: upscale, then denoise tile by tile at low strength (Magic-Me, section 3.3)."""

    stage: ClassVar[str] = "Tiled VCD"

    prompt: str = _help("identity prompt, e.g. 'a photo of <alice> woman on the beach'", default="")
    strength: float = _help(
        "how far to re-noise each tile (reference: 0.2; 0: upscale and sharpen only, no model)", default=0.2
    )
    factor: float = _help("upscale factor", default=2.0)
    upscaler_model: str | None = _help("an ESRGAN-family model file (needs spandrel); default Lanczos", default=None)
    tile: int = _help("each tile's share of the frame in pixels; a 2x 512 px clip takes 2 x 2 tiles", default=512)
    overlap: int = _help(
        "pixels each tile extends into its neighbours, blended smoothly (bounds: tile + overlap)", default=64
    )
    sharpen: float = _help("contrast-adaptive sharpening amount, 0 to 1 (reference: 0.2; 0: off)", default=0.2)
    regions: list[str] = _help(
        f"{REGIONS_HELP}; each tile's prompt then names the identities whose regions it overlaps, written "
        "where {identity} is in the prompt (nothing for a tile in no region)",
        default_factory=list,
    )
    layout: str = _help("a layout JSON file, as `generate --layout` takes, for the same placing", default="")


@dataclass
class EditSettings(VideoToVideoSettings):
    """Identity video editing: SDEdit an existing video towards the identity prompt."""

    stage: ClassVar[str] = "edit"

    prompt: str = _help("what the video should show, e.g. 'a photo of <alice> woman dancing'", default="")
    strength: float = _help("how far to re-noise: low keeps the video, high follows the prompt", default=0.6)
    num_inference_steps: int = _help("denoising steps (before strength)", default=25)
    guidance_scale: float = _help("classifier-free guidance scale", default=7.5)
    method: str = _help(
        "sdedit re-noises with the prior's noise; ddim-inversion inverts the video first (keeps more motion)",
        choices=EDIT_METHODS,
        default="sdedit",
    )
    source_prompt: str = _help("with ddim-inversion: what the input video shows, e.g. 'a woman dancing'", default="")
    window: int = _help("frames denoised together (the motion module's window)", default=16)
    window_overlap: int = _help("frames shared by consecutive windows, blended", default=4)
    max_side: int = _help("frames are resized so the longer side is at most this (multiples of 8)", default=512)


@dataclass
class EvalSettings:
    """Which encoders score the videos, and where results go."""

    references: str | None = _help("folder of the identity's reference photos", default=None)
    prompt: str = _help("the prompt the videos were made from (identity placeholders allowed)", default="")
    class_word: str | None = _help("replaces <NAME> for CLIP-T (default: person)", default=None)
    clip_model: str = _help(
        "CLIP for CLIP-I, CLIP-T and temporal consistency (hub id, folder, or none)",
        default="openai/clip-vit-base-patch32",
    )
    dino_model: str = _help("DINO for the DINO score (hub id, folder, or none)", default="facebook/dino-vits16")
    face_model: str = _help(
        "face embedder for face similarity, or one a plug-in adds (world: the miniature world's identity instrument)",
        choices=registry.face_embedder_names(),
        plugins=True,
        default="dlib",
    )
    device: str = _help("torch device for the encoders", default="cpu")
    plot: bool = _help("also write a PNG of face similarity per frame", default=False)
    output: str = _help("results JSON (a Markdown table and the plot go beside it)", default="eval.json")
