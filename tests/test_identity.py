from pathlib import Path

import pytest
import torch

from magicme.identity.files import Identity, IdentityError, load_identity, save_identity
from magicme.t2v.generate import generate
from magicme.testing.tiny import TEXT_WIDTH
from tests.conftest import quick_settings

PROMPT = "a photo of <alice> woman"
BASE_PROMPT = "a photo of woman"
PLACEHOLDER_AT = 4  # <|startoftext|> a photo of <alice...>


def save_a1111(path: Path, embeddings: torch.Tensor) -> Path:
    """The reference implementation's layout, with the extra keys A1111 writes."""
    torch.save({"string_to_param": {"*": embeddings}, "name": "ignored", "step": 400}, path)
    return path


def token_ids(pipe, prompt: str) -> list[int]:
    return pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer)).input_ids


def test_own_format_round_trip(tmp_path: Path) -> None:
    embeddings = torch.randn(4, 768)
    identity = Identity("bob", embeddings, class_word="man", metadata={"steps": 400})
    loaded = load_identity(save_identity(identity, tmp_path / "bob.safetensors"))
    assert (loaded.name, loaded.class_word, loaded.metadata) == ("bob", "man", {"steps": 400})
    assert torch.equal(loaded.embeddings, embeddings)
    assert loaded.tokens == ["<bob>", "<bob>_1", "<bob>_2", "<bob>_3"]
    assert not list(tmp_path.glob(".*partial*")), "atomic write left its temporary behind"


def test_a1111_file_loads_with_its_stem_and_can_be_renamed(tmp_path: Path) -> None:
    embeddings = torch.randn(4, 768)
    path = save_a1111(tmp_path / "carol.pt", embeddings)
    assert load_identity(path).name == "carol"
    renamed = load_identity(f"dana={path}")
    assert renamed.name == "dana" and torch.equal(renamed.embeddings, embeddings)


def test_pickled_code_is_refused_without_advice_to_disable_the_guard(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 768)}, "payload": Path("x")}, path)
    with pytest.raises(IdentityError, match="contains code, not only tensors; it was not loaded") as refused:
        load_identity(path)
    assert "weights_only" not in str(refused.value)


def save_safetensors(path: Path, content: dict) -> Path:
    from safetensors.torch import save_file

    save_file(content, str(path))
    return path


def save_pickle(path: Path, content: object) -> Path:
    torch.save(content, path)
    return path


VECTORS = torch.randn(2, 768, generator=torch.Generator().manual_seed(0))
LAYOUTS = {  # what each tool writes -> (content, the name magicme gives it from `cat-toy.SUFFIX`)
    "A1111/ComfyUI string_to_param": ({"string_to_param": {"*": VECTORS}, "name": "x", "step": 9}, "cat-toy"),
    "kohya/Civitai emb_params": ({"emb_params": VECTORS}, "cat-toy"),
    "diffusers / sd-concepts learned_embeds": ({"<cat-toy>": VECTORS}, "cat-toy"),
    "diffusers one token under another name": ({"<sks>": VECTORS}, "sks"),
    "diffusers one token that is no name": ({"*": VECTORS}, "cat-toy"),
    "a bare tensor": (VECTORS, "cat-toy"),
}


FLAT = [
    layout for layout, (content, _) in LAYOUTS.items() if isinstance(content, dict) and "string_to_param" not in content
]


@pytest.mark.parametrize(  # safetensors holds flat mappings of tensors only
    ("layout", "suffix"),
    [(layout, suffix) for layout in LAYOUTS for suffix in (".pt", ".bin")]
    + [(layout, ".safetensors") for layout in FLAT],
)
def test_identity_layouts_are_read_by_content_whatever_the_suffix(tmp_path: Path, layout: str, suffix: str) -> None:
    content, name = LAYOUTS[layout]
    path = tmp_path / f"cat-toy{suffix}"
    save_safetensors(path, content) if suffix == ".safetensors" else save_pickle(path, content)
    identity = load_identity(path)
    assert identity.name == name and torch.equal(identity.embeddings, VECTORS)


def test_an_sdxl_embedding_is_named_as_such(tmp_path: Path) -> None:
    path = save_safetensors(
        tmp_path / "xl.safetensors", {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}
    )
    with pytest.raises(IdentityError, match=r"SDXL embedding .*768.*1280"):
        load_identity(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"foo": torch.zeros(1), "bar": torch.zeros(1)}, r"not an identity layout"),
        ({"string_to_param": {"*": torch.zeros(2, 3, 4)}}, r"\(K, D\)"),
    ],
)
def test_malformed_a1111_files(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(IdentityError, match=message):
        load_identity(path)


def test_missing_or_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        load_identity(tmp_path / "nobody.safetensors")
    (tmp_path / "alice.txt").write_text("hi")
    with pytest.raises(IdentityError, match="not a readable PyTorch or safetensors file"):
        load_identity(tmp_path / "alice.txt")


@pytest.mark.parametrize("layout", ["magicme", "a1111"])
def test_identity_changes_the_prompt_only_at_its_placeholder(make_pipe, tmp_path: Path, layout: str) -> None:
    embeddings = torch.randn(4, TEXT_WIDTH, generator=torch.Generator().manual_seed(5))
    if layout == "magicme":
        path = save_identity(Identity("alice", embeddings), tmp_path / "alice.safetensors")
    else:
        path = save_a1111(tmp_path / "alice.pt", embeddings)
    pipe = make_pipe([str(path)])

    ids, base_ids = token_ids(pipe, PROMPT), token_ids(pipe, BASE_PROMPT)
    identity_slice = slice(PLACEHOLDER_AT, PLACEHOLDER_AT + 4)
    assert ids[:PLACEHOLDER_AT] + ids[identity_slice.stop :] == base_ids
    assert all(token >= 49408 for token in ids[identity_slice]), "placeholder must expand to the 4 new tokens"

    table = pipe.text_encoder.get_input_embeddings()
    input_embeddings = table(torch.tensor(ids))
    assert torch.allclose(input_embeddings[identity_slice], embeddings)
    assert torch.equal(input_embeddings[:PLACEHOLDER_AT], table(torch.tensor(base_ids[:PLACEHOLDER_AT])))

    # CLIP attends causally: the encoded prompt before the placeholder is untouched, from it on it changes.
    encoded, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    base_encoded, _ = pipe.encode_prompt(BASE_PROMPT, "cpu", 1, False)
    assert torch.allclose(encoded[0, :PLACEHOLDER_AT], base_encoded[0, :PLACEHOLDER_AT], atol=1e-6)
    assert not torch.allclose(encoded[0, PLACEHOLDER_AT], base_encoded[0, PLACEHOLDER_AT])


def test_two_identities_in_one_prompt(make_pipe, identity_file: Path, tmp_path: Path) -> None:
    bob = save_identity(Identity("bob", torch.randn(2, TEXT_WIDTH)), tmp_path / "bob.safetensors")
    pipe = make_pipe([str(identity_file), str(bob)])
    ids = token_ids(pipe, "<alice> and <bob> dancing")
    vocab = pipe.tokenizer.get_vocab()
    alice = [vocab[token] for token in ("<alice>", "<alice>_1", "<alice>_2", "<alice>_3")]
    assert ids[1:5] == alice
    assert ids[6:8] == [vocab["<bob>"], vocab["<bob>_1"]]


def test_wrong_width_names_both_widths(make_pipe, tmp_path: Path) -> None:
    sdxl_like = save_identity(Identity("wide", torch.randn(4, 1280)), tmp_path / "wide.safetensors")
    with pytest.raises(IdentityError, match=rf"width 1280.*width is {TEXT_WIDTH}"):
        make_pipe([str(sdxl_like)])


def test_duplicate_names_are_refused(make_pipe, identity_file: Path) -> None:
    with pytest.raises(IdentityError, match="two identities are named <alice> \\(names ignore case\\)"):
        make_pipe([str(identity_file), f"ALICE={identity_file}"])


def test_unknown_placeholder_is_a_clear_error(tiny_pipe) -> None:
    with pytest.raises(IdentityError, match=r"unknown identity <bob>; loaded: <alice>"):
        generate(tiny_pipe, quick_settings(prompt="a photo of <bob> man"))


def test_identity_names_work_in_any_case(tiny_pipe, make_pipe, identity_file: Path) -> None:
    """CLIP lowercases prompts: `<ALICE>` must reach all K of alice's tokens, not 1 of them."""
    from magicme.identity.files import lowercase_placeholders

    ids = token_ids(tiny_pipe, lowercase_placeholders("a photo of <ALICE> woman"))
    alice = tiny_pipe.tokenizer.convert_tokens_to_ids(load_identity(identity_file).tokens)
    assert len(alice) == 4 and all(token in ids for token in alice)
    assert torch.equal(
        generate(tiny_pipe, quick_settings(prompt="a photo of <Alice> woman")),
        generate(tiny_pipe, quick_settings(prompt="a photo of <alice> woman")),
    )
    capitalised = make_pipe([f"Alice={identity_file}"])
    assert torch.equal(
        generate(capitalised, quick_settings(prompt="a photo of <alice> woman")),
        generate(tiny_pipe, quick_settings(prompt="a photo of <alice> woman")),
    )


def test_a_truncated_identity_file_is_a_clear_error(tmp_path: Path) -> None:
    whole = save_identity(Identity("bob", torch.randn(4, 768)), tmp_path / "bob.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IdentityError, match="not a readable"):
        load_identity(cut)


def test_the_a1111_export_is_legacy_torch_serialisation_without_temporary_names(tmp_path: Path) -> None:
    """A stock A1111 refuses the zip entries current torch writes (A1111 issues 14261, 15214, 15505)."""
    from magicme.identity.files import export_a1111

    path = export_a1111(Identity("bob", torch.randn(4, 768)), tmp_path / "bob.pt")
    content = path.read_bytes()
    assert not content.startswith(b"PK"), "a zip archive"
    assert b"partial" not in content
    state = torch.load(path, weights_only=True)
    assert set(state) == {"string_to_param", "name", "step"} and state["string_to_param"]["*"].shape == (4, 768)


@pytest.mark.parametrize(
    ("output", "layout"),
    [("x.safetensors", None), ("x.pt", None), ("x.bin", None), ("x.safetensors", "diffusers")],
)
def test_convert_writes_each_layout_with_the_same_vectors(make_pipe, tmp_path: Path, output: str, layout) -> None:
    """The reference's published `.pt` identities become usable everywhere, stock diffusers included."""
    from magicme.cli import main

    vectors = torch.randn(4, TEXT_WIDTH, generator=torch.Generator().manual_seed(2))
    source = save_a1111(tmp_path / "alice.pt", vectors)
    argv = ["convert", str(source), str(tmp_path / output), "--class-word", "woman"]
    assert main([*argv, *(["--layout", layout] if layout else [])]) == 0
    converted = load_identity(tmp_path / output)
    assert converted.name == ("x" if output.endswith(".pt") else "alice") and torch.equal(converted.embeddings, vectors)
    if output == "x.safetensors" and layout is None:
        assert converted.class_word == "woman"
    if layout == "diffusers" or output.endswith(".bin"):  # diffusers' own loader, with no token= given
        pipe = make_pipe()
        pipe.load_textual_inversion(str(tmp_path / output))
        ids = pipe.tokenizer.convert_tokens_to_ids(converted.tokens)
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], vectors)


@pytest.mark.parametrize("lora", ["../../etc/passwd", "/etc/passwd", "sub/x.safetensors", ".."])
def test_an_identity_may_only_name_a_lora_in_its_own_folder(tmp_path: Path, lora: str) -> None:
    """Identity files are untrusted input: their metadata must not direct magicme to read other files."""
    path = save_identity(Identity("eve", torch.randn(2, 768), metadata={"lora": lora}), tmp_path / "eve.safetensors")
    with pytest.raises(IdentityError, match="must be a file name in its own folder"):
        load_identity(path)
