"""Regional identity binding on the tiny model: the processor's masking, layouts and their errors,
and T2V with several identities."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from magicme.errors import SettingError
from magicme.identity.files import Identity, save_identity
from magicme.t2v import generate as generate_module
from magicme.t2v.generate import bind_regions, choose_layout, generate
from magicme.t2v.layout import Region, read_layout
from magicme.t2v.regional_attention import Binding, RegionalCrossAttention, region_prompt
from magicme.testing.tiny import TEXT_WIDTH
from tests.conftest import quick_settings

TWO = "a photo of <alice> woman and <bob> man"


@pytest.fixture(scope="module")
def bob_file(tmp_path_factory) -> Path:
    embeddings = torch.randn(3, TEXT_WIDTH, generator=torch.Generator().manual_seed(2))
    return save_identity(
        Identity("bob", embeddings, class_word="man"), tmp_path_factory.mktemp("bob") / "bob.safetensors"
    )


@pytest.fixture(scope="module")
def two_pipe(tiny_model, identity_file: Path, bob_file: Path):
    from tests.conftest import load_tiny_pipeline

    return load_tiny_pipeline(tiny_model, [str(identity_file), str(bob_file)])


def test_an_identitys_tokens_get_no_attention_outside_its_region() -> None:
    """Changing only the region's text changes the output inside the region and leaves every pixel
    outside it bit for bit; outside every region the prompt's rows read the prompt with no identity,
    and the negative prompt's rows attend as diffusers' does."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=16).eval()
    frames, height, width, tokens = 3, 4, 6, 8
    left = torch.zeros(frames, height, width, dtype=torch.bool)
    left[:, :, :3] = True
    own, nobody = torch.randn(1, tokens, 16), torch.randn(1, tokens, 16)
    pixels = torch.randn(2 * frames, height * width, 32)
    text = torch.randn(2 * frames, tokens, 16)
    with torch.no_grad():
        before = RegionalCrossAttention(Binding([own], [left], nobody, guided=True))(attn, pixels, text)
        changed = Binding([own + torch.randn_like(own)], [left], nobody, guided=True)
        after = RegionalCrossAttention(changed)(attn, pixels, text)
        stock = AttnProcessor2_0()(attn, pixels, torch.cat([text[:frames], nobody.expand(frames, -1, -1)]))
    inside = left.flatten(1).repeat(2, 1)  # (rows, pixels)
    inside[:frames] = False  # the negative prompt's rows: nothing changed there
    assert torch.equal(before[~inside], after[~inside]), "the identity reached a pixel outside its region"
    assert not torch.allclose(before[inside], after[inside]), "the identity must act inside its region"
    assert torch.allclose(before[~inside], stock[~inside], atol=1e-6), "outside the region: as diffusers attends"


def test_before_binding_starts_every_pixel_reads_the_whole_prompt() -> None:
    """With `start` 0.5 of 4 steps: the first two steps attend as diffusers does, the last two are
    bound, and the next FreeInit pass starts unbound again."""
    attn = Attention(query_dim=8, cross_attention_dim=8, heads=1, dim_head=8).eval()
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    binding = Binding([torch.randn(1, 4, 8)], [full], torch.randn(1, 4, 8), guided=False, start=0.5)
    pixels, text = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    pipe = SimpleNamespace(scheduler=SimpleNamespace(timesteps=torch.arange(4)))
    processor = RegionalCrossAttention(binding)
    with torch.no_grad():
        stock = AttnProcessor2_0()(attn, pixels, text)
        bound = []
        for step in range(8):  # two passes of four steps
            bound.append(not torch.allclose(processor(attn, pixels, text), stock, atol=1e-6))
            assert binding.step_done(pipe, step % 4, None, {}) == {}
    assert bound == [False, False, True, True] * 2


def test_regions_sharing_pixels_each_give_them_half() -> None:
    attn = Attention(query_dim=8, cross_attention_dim=8, heads=1, dim_head=8).eval()
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    texts, nobody = [torch.randn(1, 4, 8), torch.randn(1, 4, 8)], torch.randn(1, 4, 8)
    pixels, text = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    with torch.no_grad():
        both = RegionalCrossAttention(Binding(texts, [full, full], nobody, guided=False))(attn, pixels, text)
        alone = [RegionalCrossAttention(Binding([t], [full], nobody, guided=False))(attn, pixels, text) for t in texts]
    assert torch.allclose(both, (alone[0] + alone[1]) / 2, atol=1e-6)


def test_each_region_reads_the_prompt_without_the_other_identities() -> None:
    assert region_prompt(TWO, "alice") == "a photo of <alice> woman and man"
    assert region_prompt(TWO, "bob", "<bob> man in a hat") == "a photo of woman and <bob> man, <bob> man in a hat"
    assert region_prompt(TWO, "") == "a photo of woman and man"


def test_one_identity_and_no_layout_renders_as_before(tiny_pipe, monkeypatch) -> None:
    """No layout and one identity: no processor is swapped, and the frames equal `layout: shared`."""
    installed = []
    real = generate_module.bound_regions
    monkeypatch.setattr(generate_module, "bound_regions", lambda *a: installed.append(a) or real(*a))
    settings = quick_settings(prompt="a photo of <alice> woman")
    default = generate(tiny_pipe, settings)
    assert not installed
    shared = generate(tiny_pipe, quick_settings(prompt="a photo of <alice> woman", layout="shared"))
    assert torch.equal(default, shared)


def test_two_identities_are_placed_side_by_side_each_region_with_its_own_prompt(two_pipe) -> None:
    settings = quick_settings(prompt=TWO)
    layout = choose_layout(settings)
    assert [(region.name, region.box_at(0)) for region in layout.regions] == [
        ("alice", (0.0, 0.0, 0.5, 1.0)),
        ("bob", (0.5, 0.0, 1.0, 1.0)),
    ]
    binding = bind_regions(two_pipe, settings, layout)
    assert torch.equal(binding.outside, two_pipe.encode_prompt("a photo of woman and man", "cpu", 1, False)[0])
    alone = ("a photo of <alice> woman and man", "a photo of woman and <bob> man")
    for text, words in zip(binding.texts, alone, strict=True):
        assert torch.equal(text, two_pipe.encode_prompt(words, "cpu", 1, False)[0])
    assert binding.masks[0][:, :, :4].all() and not binding.masks[0][:, :, 4:].any()  # 64 px: 8 latent columns


def test_binding_changes_the_clip_and_leaves_the_unet_as_it_was(two_pipe) -> None:
    before = {name: type(p) for name, p in two_pipe.unet.attn_processors.items()}
    bound = generate(two_pipe, quick_settings(prompt=TWO))
    assert {name: type(p) for name, p in two_pipe.unet.attn_processors.items()} == before
    shared = generate(two_pipe, quick_settings(prompt=TWO, layout="shared"))
    assert not torch.equal(bound, shared)
    assert torch.equal(generate(two_pipe, quick_settings(prompt=TWO)), bound), "the same settings, the same clip"
    later = generate(two_pipe, quick_settings(prompt=TWO, binding_start=0.5))
    assert not torch.equal(later, bound) and not torch.equal(later, shared)


@pytest.mark.parametrize(
    "features",
    [
        {"freeu": True},
        {"free_init": True, "free_init_iters": 2},
        {"free_noise_context": 8, "free_noise_stride": 2, "num_frames": 12, "free_noise": True},
        {"guidance_scale": 1.0},
        {"binding_start": 0.5, "free_init": True, "free_init_iters": 2},
    ],
)
def test_binding_composes_with_the_pipelines_features(two_pipe, features: dict) -> None:
    frames = generate(two_pipe, quick_settings(prompt=TWO, regions=["alice=left-third", "bob=right-third"], **features))
    assert frames.shape[0] == features.get("num_frames", 8) and torch.isfinite(frames).all()


def test_a_region_prompt_is_added_and_bound_to_its_region(two_pipe, tmp_path: Path) -> None:
    layout_file = tmp_path / "layout.json"
    tracks = {"alice": {"box": [0, 0, 0.5, 1], "prompt": "<alice> woman in a red coat"}}
    tracks["bob"] = {"track": {"0": [0.5, 0, 1, 1], "7": [0.5, 0.25, 1, 0.75]}}
    layout_file.write_text(json.dumps(tracks))
    settings = quick_settings(prompt=TWO, layout=str(layout_file))
    binding = bind_regions(two_pipe, settings, choose_layout(settings))
    alone = "a photo of <alice> woman and man, <alice> woman in a red coat"
    assert torch.equal(binding.texts[0], two_pipe.encode_prompt(alone, "cpu", 1, False)[0])
    assert binding.masks[1][0, 0, 4:].all() and not binding.masks[1][7, 0, 4:].any()  # bob's box moved down


def test_a_box_track_is_interpolated_between_its_keyframes() -> None:
    region = Region("alice", {0: (0.0, 0.0, 0.5, 1.0), 10: (0.5, 0.0, 1.0, 1.0)})
    assert region.box_at(5) == (0.25, 0.0, 0.75, 1.0)
    assert region.box_at(-1) == region.box_at(0) and region.box_at(20) == region.box_at(10)


def write_mask(path: Path, white: bool) -> str:
    Image.new("L", (8, 8), 255 if white else 0).save(path)
    return str(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"regions": ["alice=0,0,1.2,1", "bob=right"]}, "leaves the frame"),
        ({"regions": ["alice=left"]}, "names <bob> but the layout gives it no region"),
        ({"regions": ["alice=left", "bob=center"]}, "share 50% of the smaller one"),
        ({"regions": ["alice=left", "bob=somewhere"]}, "neither a place"),
        ({"regions": ["alice=left", "bob=right", "carol=full"]}, "neither the prompt nor its region's prompt"),
        ({"regions": ["alice=left", "alice=right"]}, "two regions"),
        ({"regions": ["alice=left"], "layout": "shared"}, "binds no identity"),
        ({"prompt": "0: <alice> woman and <bob> man | 4: <alice> and <bob> dancing"}, "prompt travel"),
        ({"regions": ["alice=left", "bob=0.5,0,0.51,0.1"]}, "smaller than one latent pixel"),
        ({"binding_start": 1.0}, "for no binding at all use `layout: shared`"),
    ],
)
def test_bad_layouts_are_clear_errors(two_pipe, change: dict, words: str) -> None:
    with pytest.raises(SettingError, match=words.replace("(", r"\(")):
        generate(two_pipe, quick_settings(**({"prompt": TWO} | change)))


def test_mask_and_layout_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="no white pixel"):
        read_layout("", [f"alice={write_mask(tmp_path / 'black.png', False)}"])
    assert read_layout("", [f"alice={write_mask(tmp_path / 'white.png', True)}"]).regions[0].masks(2, 4, 4).all()
    (tmp_path / "bad.json").write_text(json.dumps({"alice": {"box": [0, 0, 1, 1], "track": {}}}))
    with pytest.raises(SettingError, match="one of box, track or mask"):
        read_layout(str(tmp_path / "bad.json"), [])
    (tmp_path / "keys.json").write_text(json.dumps({"alice": {"track": {"start": [0, 0, 1, 1]}}}))
    with pytest.raises(SettingError, match="frame numbers"):
        read_layout(str(tmp_path / "keys.json"), [])
    with pytest.raises(SettingError, match="not a file"):
        read_layout(str(tmp_path / "missing.json"), [])


def test_render_refuses_a_bad_layout_file_before_loading_a_model(tmp_path, monkeypatch) -> None:
    from magicme.settings import ModelSettings

    loads, reads = [], []
    monkeypatch.setattr(generate_module, "shared_pipeline", lambda model: loads.append(model))
    monkeypatch.setattr(generate_module, "generate_in_layout", lambda pipe, settings, layout: reads.append(layout))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SettingError, match="not valid JSON"):
        generate_module.render(
            ModelSettings(), quick_settings(prompt=TWO, layout=str(tmp_path / "bad.json")), tmp_path / "a.mp4"
        )
    assert loads == [] and reads == []


def test_the_cli_takes_regions_and_the_sidecar_records_the_layout(
    tiny_model, identity_file, bob_file, tmp_path
) -> None:
    from magicme.cli import main

    base, motion = tiny_model
    output = tmp_path / "two.mp4"
    argv = ["generate", "--base-model", str(base), "--motion-adapter", str(motion)]
    argv += ["--identity", str(identity_file), "--identity", str(bob_file), "--prompt", TWO]
    argv += ["--num-frames", "4", "--height", "64", "--width", "64", "--num-inference-steps", "2"]
    assert main([*argv, "--region", "alice=left", "--region", "bob=right", "-o", str(output)]) == 0
    sidecar = json.loads((tmp_path / "two.json").read_text())
    assert sidecar["generation"]["regions"] == ["alice=left", "bob=right"]
    assert sidecar["record"]["layout"]["bob"] == {"track": {"0": [0.5, 0.0, 1.0, 1.0]}}
    assert main([*argv, "--region", "alice=left", "-o", str(tmp_path / "bad.mp4")]) == 2
    assert not (tmp_path / "bad.mp4").exists()


def test_face_vcd_refines_each_face_as_the_identity_of_its_region(
    tiny_model, identity_file, bob_file, astronaut, tmp_path, monkeypatch
) -> None:
    """Two astronauts side by side: with alice's region on the left only, her face is refined with her
    prompt and the right face, in no region, is left; with both regions, both faces are refined. No
    denoiser without an identity is built: every face gets its identity's."""
    import numpy as np

    from magicme.cli import main
    from magicme.io.video import read_video, save_video
    from magicme.v2v import jobs

    monkeypatch.setattr(jobs, "load_denoiser", lambda *args: pytest.fail("a denoiser no face uses was built"))

    half = torch.from_numpy(np.array(astronaut.image.resize((256, 256)))).permute(2, 0, 1).float() / 255
    clip = save_video(torch.cat([half, half], dim=2)[None].repeat(4, 1, 1, 1), tmp_path / "two.mp4")
    base, motion = tiny_model
    argv = ["refine-face", str(clip), "--base-model", str(base), "--motion-adapter", str(motion)]
    argv += ["--identity", str(identity_file), "--identity", str(bob_file), "--prompt", "close up photo of {identity}"]
    argv += ["--num-inference-steps", "2", "--guide-size", "64", "--min-enlargement", "1"]
    before = read_video(clip)
    assert main([*argv, "--region", "alice=left", "-o", str(tmp_path / "alice.mp4")]) == 0
    change = (read_video(tmp_path / "alice.mp4") - before).abs().mean(dim=(0, 1))
    assert change[:, :256].mean() > 0.03 and change[:, 256:].mean() < 0.02, "her face refined, the other left"
    assert main([*argv, "--region", "alice=left", "--region", "bob=right", "-o", str(tmp_path / "both.mp4")]) == 0
    change = (read_video(tmp_path / "both.mp4") - before).abs().mean(dim=(0, 1))
    assert change[:, 256:].mean() > 0.03
    assert json.loads((tmp_path / "both.json").read_text())["refine_face"]["regions"] == ["alice=left", "bob=right"]
    assert main([*argv[:-8], "--prompt", "close up photo", *argv[-6:], "--region", "alice=left"]) == 2


def test_a_chains_face_and_tile_stages_take_the_regions_the_clip_was_made_with() -> None:
    from magicme.chain import parse_chain

    face = {"prompt": "close up photo of {identity}"}
    automatic = parse_chain({"generation": {"prompt": TWO}, "refine_face": face}, "chain")[3]["refine_face"]
    assert automatic.regions == ["alice=0.0,0.0,0.5,1.0", "bob=0.5,0.0,1.0,1.0"]
    given = {"prompt": TWO, "regions": ["alice=right", "bob=left"]}
    assert parse_chain({"generation": given, "refine_face": face}, "c")[3]["refine_face"].regions == given["regions"]
    own = face | {"regions": ["alice=full"]}
    assert parse_chain({"generation": given, "refine_face": own}, "c")[3]["refine_face"].regions == ["alice=full"]
    one = {"prompt": "a photo of <alice> woman"}
    assert parse_chain({"generation": one, "refine_face": face}, "c")[3]["refine_face"].regions == []
    tiles = parse_chain({"generation": given, "upscale": {"prompt": "a photo of {identity}"}}, "c")[3]["upscale"]
    assert tiles.regions == given["regions"]


def test_each_tile_is_prompted_with_the_identities_its_place_overlaps(identity_file, bob_file, monkeypatch) -> None:
    from magicme.settings import ModelSettings, UpscaleSettings
    from magicme.v2v import identities

    monkeypatch.setattr(identities, "shared_pipeline", lambda model: None)
    monkeypatch.setattr(identities, "make_denoiser", lambda pipe, settings: settings.prompt)  # the prompt it gets
    model = ModelSettings(identities=[str(identity_file), str(bob_file)])
    settings = UpscaleSettings(prompt="a photo of {identity} on the beach")
    layout = read_layout("", ["alice=left-third", "bob=right-third"])
    for_tile = identities.tile_denoisers(model, settings, layout, torch.Size([4, 3, 96, 192]))
    assert for_tile((0.0, 0.0, 0.4, 1.0)) == "a photo of <alice> woman on the beach"
    assert for_tile((0.5, 0.0, 1.0, 0.5)) == "a photo of <bob> man on the beach"
    assert for_tile((0.2, 0.0, 0.8, 1.0)) == "a photo of <alice> woman and <bob> man on the beach"
    assert for_tile((0.4, 0.0, 0.6, 1.0)) == "a photo of on the beach"
    with pytest.raises(SettingError, match="write \\{identity\\}"):
        identities.identity_free(UpscaleSettings(prompt="a photo of <alice> woman"))


def test_tiles_go_to_their_own_denoisers_and_blend_as_before() -> None:
    """Each tile through the denoiser its place chooses; with one denoiser for all, the same as before."""
    from magicme.v2v.tiles import denoise_tiled

    frames = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    noise = torch.zeros(1, 4, 2, 8, 16)
    calls = []

    def shade(value: float):
        return lambda clips, noise: calls.append(value) or torch.full_like(clips, value)

    dark, light = shade(0.0), shade(1.0)
    chosen = denoise_tiled(frames, None, noise, 32, 16, batch=4, denoiser_for=lambda p: dark if p[0] < 0.4 else light)
    assert chosen[..., :, :24].max() == 0 and chosen[..., :, 104:].min() == 1
    assert calls == [0.0, 1.0], "2 x 4 tiles: each denoiser's 4 tiles in one call"
    assert torch.equal(denoise_tiled(frames, dark, noise, 32, 16), denoise_tiled(frames, dark, noise, 32, 16, 3))


def test_faces_are_matched_to_the_identity_they_resemble_before_their_region(
    identity_file, bob_file, tmp_path, monkeypatch
) -> None:
    """Two world characters, bob on the left and alice on the right, with regions that say the
    opposite: given each one's photos, every face goes to the identity it resembles (the world's
    face model); without photos, to its region."""
    import numpy as np

    from magicme.settings import FaceSettings, ModelSettings
    from magicme.v2v import identities
    from magicme.v2v.faces import fill_missing, link_tracks
    from magicme.world import scenes
    from magicme.world.instruments import world_instruments

    monkeypatch.setattr(identities, "shared_pipeline", lambda model: None)
    monkeypatch.setattr(identities, "make_denoiser", lambda pipe, settings: settings.prompt)
    images = []
    for seed in range(4):
        image = scenes.draw_scene("grass", 64, seed)
        for identity, x in ((1011, 0.27), (1010, 0.73)):
            scenes.draw_character(scenes.character(identity), image, (64 * x, 35), 38)
        images.append(np.asarray(image))
    frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    for name, identity in (("alice", 1010), ("bob", 1011)):
        scenes.write_identity_photos(tmp_path / name, identity)
    model = ModelSettings(identities=[str(identity_file), str(bob_file)])
    swapped = read_layout("", ["alice=left", "bob=right"])
    locate = world_instruments().locate_faces
    tracks = sorted(
        (fill_missing(track) for track in link_tracks([locate(image) for image in images])), key=lambda t: t[0][0]
    )
    assert len(tracks) == 2
    prompt = "close up photo of {identity}"
    photos = [f"alice={tmp_path / 'alice'}", f"bob={tmp_path / 'bob'}"]
    by_face = FaceSettings(prompt=prompt, references=photos, face_model="world")
    chosen = identities.face_owners(model, by_face, swapped, frames)
    assert [chosen(track) for track in tracks] == ["close up photo of <bob> man", "close up photo of <alice> woman"]
    by_region = identities.face_owners(model, FaceSettings(prompt=prompt), swapped, frames)
    assert [by_region(track) for track in tracks] == ["close up photo of <alice> woman", "close up photo of <bob> man"]
