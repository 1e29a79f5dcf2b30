"""The built-in demo: the whole T2V VCD path on a tiny built-in model, offline, on a CPU.

Until magicme ships a trained miniature model, the demo's model is random: the video
shows that loading, identities, prompt travel, the noise prior and video writing work
end to end, not what real weights produce.
"""

from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from magicme.config import GenerationSettings, ModelSettings
from magicme.identity import Identity, save_identity
from magicme.render import render
from magicme.tiny import save_tiny_model

DEMO_PROMPT = "0: a photo of <demo> person walking on the beach | 8: a photo of <demo> person running in the city"
NOTICE = (
    "This video comes from a tiny, randomly initialised model: it shows the pipeline running end to end, "
    "not image quality. For real videos, see 'Quick start on a GPU' in README.md."
)


def make_demo_identity(base: Path, path: Path, num_tokens: int = 4) -> Path:
    """A K-token identity initialised from the word 'person', as ID training starts."""
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    table = CLIPTextModel.from_pretrained(base / "text_encoder").get_input_embeddings().weight
    person = table[tokenizer.convert_tokens_to_ids("person</w>")]
    generator = torch.Generator().manual_seed(0)
    offsets = 0.1 * person.norm() * torch.randn(num_tokens, person.numel(), generator=generator) / person.numel() ** 0.5
    return save_identity(Identity("demo", (person + offsets).detach(), class_word="person"), path)


def run_demo(output_dir: Path = Path("outputs/demo")) -> Path:
    """Build the tiny model and a demo identity, then render a 16-frame prompt-travel clip."""
    base, motion = save_tiny_model(output_dir / "tiny-model")
    identity = make_demo_identity(base, output_dir / "demo-identity.safetensors")
    model = ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=[str(identity)])
    generation = GenerationSettings(prompt=DEMO_PROMPT, height=128, width=128, num_inference_steps=10)
    return render(model, generation, output_dir / "demo.mp4")
