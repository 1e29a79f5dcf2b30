"""magicme's identity and LoRA files read by every tool users have: diffusers for real, A1111 and
ComfyUI through their loading rules reproduced in tests/consumers.py."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magicme.identity.files import Identity, export_a1111, load_identity, save_identity
from magicme.identity.lora import export_lora, save_kohya_lora
from magicme.testing.tiny import TEXT_WIDTH, build_tiny_model
from tests.consumers import (
    a1111_embedding,
    a1111_lora_modules,
    comfyui_embedding,
    comfyui_lora_patches,
    comfyui_unet_config,
    ldm_module_names,
)

VECTORS = torch.randn(4, TEXT_WIDTH, generator=torch.Generator().manual_seed(3))
WRITERS = {"NAME.safetensors": save_identity, "NAME.pt": export_a1111}


@pytest.fixture(params=list(WRITERS))
def identity_export(request, tmp_path: Path) -> Path:
    """An identity named alice, in each file magicme writes for it."""
    suffix = Path(request.param).suffix
    return WRITERS[request.param](Identity("alice", VECTORS, class_word="woman"), tmp_path / f"alice{suffix}")


def test_diffusers_registers_the_identity_without_token(identity_export: Path, make_pipe) -> None:
    pipe = make_pipe()
    pipe.load_textual_inversion(str(identity_export))  # no token=: the file names itself <alice>
    ids = pipe.tokenizer.convert_tokens_to_ids(["<alice>", "<alice>_1", "<alice>_2", "<alice>_3"])
    assert pipe.tokenizer.unk_token_id not in ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], VECTORS)


def test_a1111_loads_the_identity_by_its_file_name(identity_export: Path) -> None:
    word, vectors = a1111_embedding(identity_export)
    assert word == "alice" and torch.equal(vectors, VECTORS)


def test_comfyui_loads_the_identity(identity_export: Path) -> None:
    assert torch.equal(comfyui_embedding(identity_export), VECTORS)


def test_magicme_reads_its_first_identity_version_too(tmp_path: Path) -> None:
    """magicme 0.1 keyed the tensor `embeddings`; those files still load."""
    from safetensors.torch import save_file

    metadata = {"format": "magicme-identity", "format_version": "1", "name": "bob", "class_word": "man"}
    save_file({"embeddings": VECTORS}, str(tmp_path / "old.safetensors"), metadata)
    identity = load_identity(tmp_path / "old.safetensors")
    assert (identity.name, identity.class_word) == ("bob", "man") and torch.equal(identity.embeddings, VECTORS)


def test_kohya_lora_matches_every_key_in_a1111_and_comfyui(unet_with_lora, tmp_path: Path) -> None:
    unet, peft_state = unet_with_lora
    lora = load_file(str(save_kohya_lora(peft_state, tmp_path / "alice.lora.safetensors")))
    modules = len(peft_state) // 2
    config = comfyui_unet_config(unet)

    patches, not_loaded = comfyui_lora_patches(lora, config)
    assert not not_loaded and len(patches) == modules
    assert all(alpha == 2 for _, _, alpha in patches.values())  # alpha = rank: scale 1, as trained

    matched, failed = a1111_lora_modules(lora, ldm_module_names(config))
    assert not failed and len(matched) == modules
    assert all(parts == {"lora_up.weight", "lora_down.weight", "alpha"} for parts in matched.values())
    assert set(matched) == {key.removesuffix(".weight").replace(".", "_") for key in patches}  # same layers


def test_diffusers_loads_the_kohya_lora_to_the_same_output(unet_with_lora, tmp_path: Path) -> None:
    unet, peft_state = unet_with_lora
    path = save_kohya_lora(peft_state, tmp_path / "alice.lora.safetensors")
    pipe = build_tiny_model(seed=1)[0]
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 5, TEXT_WIDTH))
    with torch.no_grad():
        plain = pipe.unet(*inputs).sample
        pipe.load_lora_weights(str(path))
        loaded, trained = pipe.unet(*inputs).sample, unet(*inputs).sample
    assert not torch.allclose(plain, trained, atol=1e-3), "the LoRA must change the output"
    assert torch.allclose(loaded, trained, atol=1e-5)


def test_a_diffusers_layout_lora_converts_to_the_kohya_one(unet_with_lora, tmp_path: Path) -> None:
    """LoRAs written by magicme 0.1 (diffusers' layout) become kohya files with `magicme convert`."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    _, peft_state = unet_with_lora
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(peft_state), weight_name="old.safetensors"
    )
    converted = load_file(str(export_lora(tmp_path / "old.safetensors", tmp_path / "new.safetensors")))
    expected = load_file(str(save_kohya_lora(peft_state, tmp_path / "kohya.safetensors")))
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[key], expected[key]) for key in expected)


def test_the_rules_refuse_what_the_tools_refuse(unet_with_lora, tmp_path: Path) -> None:
    """The reproduced rules are strict where the tools are: a zip `.pt` from current torch fails A1111's
    check, and a LoRA in diffusers' layout matches no key in A1111 or ComfyUI (the issue's 0 of 96)."""
    import pickle

    from tests.consumers import a1111_check_pt

    torch.save({"string_to_param": {"*": VECTORS}}, tmp_path / "zip.pt")
    with pytest.raises(pickle.UnpicklingError, match="bad file inside"):
        a1111_check_pt(tmp_path / "zip.pt")
    unet, peft_state = unet_with_lora
    diffusers_layout = {"unet." + key: value for key, value in peft_state.items()}
    config = comfyui_unet_config(unet)
    patches, not_loaded = comfyui_lora_patches(diffusers_layout, config)
    assert not patches and len(not_loaded) == len(peft_state)
    matched, failed = a1111_lora_modules(diffusers_layout, ldm_module_names(config))
    assert not matched and len(failed) == len(peft_state)
