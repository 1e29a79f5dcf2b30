import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from magicme.cli import main
from magicme.eval.encoders import dlib_face_embedder
from magicme.eval.evaluate import format_table, prompt_for_clip
from magicme.eval.metrics import (
    cosine,
    dynamic_degree,
    flicker,
    similarity_to_references,
    summary,
    temporal_consistency,
)
from magicme.io.video import save_video


def moving_gradient(frames: int = 8, size: int = 64, shift: int = 2) -> torch.Tensor:
    """A smooth 2D pattern sliding right by `shift` pixels a frame (1D patterns defeat optical flow)."""
    x = torch.arange(size).float()
    rows = torch.cos(x[:, None] / 5)
    clip = [(torch.sin((x[None, :] - shift * t) / 6) * rows + 1) / 2 for t in range(frames)]
    return torch.stack(clip)[:, None].expand(-1, 3, -1, -1).contiguous()  # (F, 3, H, W)


def test_similarity_of_a_frame_with_itself_is_one() -> None:
    embeddings = torch.randn(5, 16)
    assert torch.allclose(cosine(embeddings, embeddings).diagonal(), torch.ones(5), atol=1e-6)
    assert torch.allclose(similarity_to_references(embeddings[:1], embeddings[:1]), torch.ones(1))


def test_identical_frames_are_perfectly_consistent_and_still() -> None:
    frames = moving_gradient(shift=0)
    assert temporal_consistency(frames.flatten(1)) == pytest.approx(1.0)
    assert flicker(frames) == 0 and dynamic_degree(frames) < 0.05  # px per frame: numerical noise only


def test_shuffled_frames_score_lower_than_ordered_ones() -> None:
    ordered = moving_gradient(frames=12)
    shuffled = ordered[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert temporal_consistency(ordered.flatten(1)) > temporal_consistency(shuffled.flatten(1))
    assert flicker(ordered) < flicker(shuffled)


def test_dynamic_degree_measures_the_motion_in_pixels() -> None:
    assert dynamic_degree(moving_gradient(shift=2)) == pytest.approx(2, abs=0.5)
    assert dynamic_degree(moving_gradient(shift=4)) > dynamic_degree(moving_gradient(shift=2))


def test_summary_counts_frames_without_a_face() -> None:
    stats = summary([0.9, None, 0.5, 0.7])
    assert stats["frames_scored"] == 3 and stats["frames"] == 4
    assert stats["min"] == 0.5 and stats["mean"] == pytest.approx(0.7)
    assert summary([None, None])["mean"] is None


@pytest.mark.parametrize(
    ("prompt", "class_word", "expected"),
    [
        ("a photo of <alice> woman on the beach", "woman", "a photo of woman on the beach"),
        ("<alice> dancing", "woman", "woman dancing"),
        ("<alice> woman and <bob> man", None, "person woman and person man"),
    ],
)
def test_placeholders_become_the_class_word_for_clip(prompt: str, class_word: str | None, expected: str) -> None:
    assert prompt_for_clip(prompt, class_word) == expected


def test_dlib_scores_the_astronaut_against_her_mirror_and_noise(astronaut) -> None:
    embed = dlib_face_embedder()
    face = np.asarray(astronaut.image)
    original, mirrored = embed(face), embed(face[:, ::-1])
    assert original.shape == (128,)
    assert torch.dist(original, mirrored) < 0.6, "dlib's own threshold for the same person"
    assert float(cosine(original[None], mirrored[None])) > 0.95
    assert embed(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)) is None


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory) -> tuple[Path, Path]:
    """Random tiny CLIP and DINO (ViT) with processors, as local folders."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from magicme.models.loading import CONFIGS

    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    clip_dir, dino_dir = tmp_path_factory.mktemp("clip"), tmp_path_factory.mktemp("dino")
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 49408},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(clip_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIGS / "sd15" / "tokenizer"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(clip_dir)
    ViTModel(ViTConfig(**tower, image_size=32, patch_size=8), add_pooling_layer=False).save_pretrained(dino_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(dino_dir)
    return clip_dir, dino_dir


@pytest.fixture(scope="module")
def face_video(astronaut, tmp_path_factory) -> Path:
    """6 frames: the astronaut sliding, then two frames of noise (no face)."""
    frames = [np.asarray(astronaut.image.crop((4 * t, 0, 480 + 4 * t, 480)).resize((256, 256))) for t in range(4)]
    frames += [np.random.default_rng(t).integers(0, 255, (256, 256, 3), dtype=np.uint8) for t in range(2)]
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    return save_video(pixels, tmp_path_factory.mktemp("videos") / "astronaut.mp4")


def test_cli_eval_writes_json_table_and_plot(tiny_encoders, face_video: Path, astronaut_folder: Path, tmp_path) -> None:
    clip, dino = tiny_encoders
    output = tmp_path / "eval.json"
    argv = ["eval", str(face_video), "--references", str(astronaut_folder), "--class-word", "woman"]
    argv += ["--prompt", "a photo of <astro> woman", "--clip-model", str(clip), "--dino-model", str(dino)]
    assert main([*argv, "--plot", "--output", str(output)]) == 0
    result = json.loads(output.read_text())["videos"][0]
    assert result["face_detection_rate"] == pytest.approx(4 / 6), "frames without a face are counted, not dropped"
    assert result["face_similarity_per_frame"][4:] == [None, None]
    assert result["face_similarity"]["mean"] > 0.9, "the astronaut matches her own photos"
    for key in ("clip_i", "clip_t", "dino", "temporal_consistency"):
        assert -1 <= result[key] <= 1
    assert result["clip_t_prompt"] == "a photo of woman"
    assert "| astronaut.mp4 |" in (tmp_path / "eval.md").read_text()
    assert (tmp_path / "eval.png").stat().st_size > 1000


def test_table_marks_unmeasured_metrics() -> None:
    table = format_table([{"video": "a.mp4", "flicker": 0.1, "clip_i": None}, {"video": "b.mp4", "clip_i": 0.5}])
    assert "| a.mp4 | n/a | 0.100 |" in table and "| b.mp4 | 0.500 | n/a |" in table


def test_protocol_drives_generate_and_eval(
    tiny_model, identity_file, astronaut_folder, tmp_path, tiny_encoders
) -> None:
    protocol = tmp_path / "protocol.yaml"
    identities = {"alice": {"file": str(identity_file), "references": str(astronaut_folder), "class_word": "woman"}}
    generation = {"num_frames": 4, "height": 64, "width": 64, "num_inference_steps": 1}
    content = {"identities": identities, "prompts": ["a photo of {identity}", "{identity} waving"], "seeds": [0, 1]}
    protocol.write_text(yaml.safe_dump(content | {"generation": generation}))
    videos = tmp_path / "videos"
    base, motion = tiny_model
    model = ["--base-model", str(base), "--motion-adapter", str(motion)]
    assert main(["generate", "--protocol", str(protocol), "--output-dir", str(videos), *model]) == 0
    assert sorted(p.name for p in videos.glob("*.mp4")) == [f"alice-p{p}-s{s}.mp4" for p in (0, 1) for s in (0, 1)]
    sidecar = json.loads((videos / "alice-p1-s0.json").read_text())
    assert sidecar["generation"]["prompt"] == "<alice> woman waving"

    clip, dino = tiny_encoders
    output = tmp_path / "scores.json"
    argv = ["eval", "--protocol", str(protocol), "--videos-dir", str(videos), "--face-model", "none"]
    assert main([*argv, "--clip-model", str(clip), "--dino-model", str(dino), "--output", str(output)]) == 0
    assert len(json.loads(output.read_text())["videos"]) == 4
    (videos / "alice-p0-s1.mp4").unlink()
    assert main([*argv, "--clip-model", "none", "--dino-model", "none"]) == 2


def test_generation_options_beside_a_protocol_apply_to_every_video(
    tiny_model, identity_file, astronaut_folder, tmp_path, capsys
) -> None:
    protocol = tmp_path / "protocol.yaml"
    identities = {"alice": {"file": str(identity_file), "references": str(astronaut_folder)}}
    generation = {"num_frames": 2, "height": 32, "width": 32, "num_inference_steps": 1, "gamma": 0.1}
    protocol.write_text(yaml.safe_dump({"identities": identities, "prompts": ["{identity}"], "seeds": [0, 1]}))
    protocol.write_text(protocol.read_text() + yaml.safe_dump({"generation": generation}))
    base, motion = tiny_model
    argv = ["generate", "--protocol", str(protocol), "--base-model", str(base), "--motion-adapter", str(motion)]
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--gamma", "0.3"]) == 0
    sidecars = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert [s["generation"]["gamma"] for s in sidecars] == [0.3, 0.3]
    assert [s["generation"]["seed"] for s in sidecars] == [0, 1]

    assert main([*argv, "--output-dir", str(tmp_path / "refused"), "--seed", "9"]) == 2
    assert "sets each video's --seed from its `prompts` and `seeds`" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_eval_needs_something_to_score(capsys) -> None:
    assert main(["eval", "--face-model", "none"]) == 2
    assert "give VIDEOS with --references and --prompt" in capsys.readouterr().err


def test_protocol_splits_across_processes(tiny_model, identity_file, astronaut_folder, tmp_path) -> None:
    """Two CPU processes under torchrun: each renders its share into one folder."""
    import socket
    import subprocess
    import sys

    protocol = tmp_path / "protocol.yaml"
    identities = {"alice": {"file": str(identity_file), "references": str(astronaut_folder)}}
    generation = {"num_frames": 2, "height": 32, "width": 32, "num_inference_steps": 1}
    protocol.write_text(yaml.safe_dump({"identities": identities, "prompts": ["{identity}"], "seeds": [0, 1, 2, 3]}))
    protocol.write_text(protocol.read_text() + yaml.safe_dump({"generation": generation}))
    with socket.socket() as probe:  # a free port for the processes to meet on
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    command = ["-m", "magicme.cli", "generate", "--protocol", str(protocol), "--output-dir", str(tmp_path / "out")]
    command += ["--base-model", str(tiny_model[0]), "--motion-adapter", str(tiny_model[1])]
    subprocess.run([*launch, *command], check=True, capture_output=True, cwd=tmp_path)
    sidecars = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert len(sidecars) == 4
    assert sorted(s["record"]["process"] for s in sidecars) == [0, 0, 1, 1]
