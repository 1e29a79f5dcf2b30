"""magicme studio through its API (gradio_client), on the world model, as a user's session runs.

One server, one workspace: train an identity for a few steps, render it with Face VCD and
Tiled VCD, download the video and its sidecar, reopen it from the history, and check that
bad input is a message and the server still answers. The workspace rules (names, photos,
identity files, paths) are tested directly.
"""

import html
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from magicme.identity.files import Identity, export_a1111
from magicme.io.video import read_video
from magicme.studio import jobs
from magicme.studio.workspace import Workspace, checked_name, safe_file_name
from tests.studio_server import studio, world_photos

STEPS = 20


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory):
    """A running studio on a fresh workspace, the client, and the world photos to learn from."""
    root = tmp_path_factory.mktemp("studio")
    photos = world_photos(root / "photos")
    with studio(root / "workspace") as url:
        yield Client(url, verbose=False), root / "workspace", photos


def generation_form(prompt: str, seed: int = 3, upscale_strength: float = 0.1) -> list:
    """The Generate tab's fields: 8 frames at 64 px, 4 steps, Face VCD and a 2x Tiled VCD."""
    return [prompt, "", 8, 64, 64, 4, 7.5, 0.1, seed, "ddim", False, False, False, True, True, upscale_strength]


def test_train_render_download_and_history(session) -> None:
    client, workspace, photos = session
    files = [handle_file(str(p)) for p in photos]
    sheet, status = client.predict(files, "hero", "person", "files", STEPS, api_name="/check_masks")
    assert Path(sheet).is_file() and "Masks ready" in status

    job = client.submit(files, "hero", "person", "files", STEPS, api_name="/train")
    updates = [update[3] for update in job]
    assert any(f"of {STEPS}" in update for update in updates[:-1])  # live progress while it trains
    assert "ready" in updates[-1]
    table = job.result()[4]
    assert ["hero", "person", "yes", "hero.safetensors"] in table["data"]
    assert len(Workspace(workspace).losses("hero")) == STEPS

    prompt = client.predict("", "hero", api_name="/insert")
    assert prompt == "a photo of <hero> person"
    video, stages, _, metrics, downloads, seed_line, history = client.predict(
        *generation_form(prompt + " in the forest"), api_name="/generate"
    )
    frames = read_video(Path(video))
    assert stages  # the middle frames side by side
    assert frames.shape == (8, 3, 128, 128)  # 2x upscale of 64 px
    assert {Path(d).suffix for d in downloads} == {".mp4", ".json"}
    sidecar = json.loads(Path(next(d for d in downloads if d.endswith(".json"))).read_text())
    assert sidecar["upscale"]["strength"] == 0.1 and "<hero>" in sidecar["upscale"]["prompt"]
    for stage in ("T2V VCD", "+ Face VCD", "+ 2x upscale"):
        assert f"| {stage} |" in metrics
    assert "Seed:** 3" in seed_line

    label = history["value"]
    reopened = client.predict(label, api_name="/reopen")
    assert read_video(Path(reopened[0])).shape == frames.shape
    assert reopened[7] == prompt + " in the forest" and reopened[15] == 3  # the form, refilled


def page_message(client: Client, *inputs: object, api_name: str) -> str:
    """The message the page shows for a call that fails (as text: the page escapes it for HTML)."""
    with pytest.raises(AppError) as failed:
        client.predict(*inputs, api_name=api_name)
    return html.unescape(str(failed.value))


def test_bad_input_is_a_message_and_the_server_keeps_answering(session, tmp_path: Path) -> None:
    client, workspace, photos = session
    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    files = [handle_file(str(p)) for p in [*photos[:4], text]]  # 2 photos and their masks, and a text file
    assert "notes.png: not a readable image" in page_message(
        client, files, "broken", "person", "files", STEPS, api_name="/train"
    )
    assert "write a prompt" in page_message(client, *generation_form(""), api_name="/generate")
    unknown = generation_form("a photo of <nobody> person")
    assert "unknown identity <nobody>" in page_message(client, *unknown, api_name="/generate")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    assert "code" in page_message(client, handle_file(str(evil)), "", "", api_name="/import_identity")
    assert client.predict(api_name="/refresh")[4].startswith("**Model:**")  # still serving
    assert not (workspace / "identities" / "broken" / "photos").exists()


def test_an_a1111_file_uploads_exports_and_deletes(session, tmp_path: Path) -> None:
    client, workspace, _ = session
    pt = export_a1111(Identity("friend", torch.randn(4, 64), class_word="person"), tmp_path / "friend.pt")
    status, table, *_ = client.predict(handle_file(str(pt)), "pal", "", api_name="/import_identity")
    assert "<pal>" in status and ["pal", "person", "uploaded", "pal.safetensors"] in table["data"]
    for layout, suffix in (("A1111 / ComfyUI (.pt)", ".pt"), ("diffusers (.bin)", ".bin")):
        assert client.predict("pal", layout, api_name="/export").endswith("pal" + suffix)
    client.predict("pal", api_name="/delete")
    assert not (workspace / "identities" / "pal").exists()


def test_only_workspace_files_are_served(session) -> None:
    client = session[0]
    for outside in ("/etc/passwd", str(Path(__file__).resolve())):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{client.src}gradio_api/file={outside}")
        assert refused.value.code == 403


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "x" * 41, "<bad name>"])
def test_names_that_walk_paths_or_break_prompts_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a usable name"):
        checked_name(name)
    assert checked_name("<Alice_2>") == "alice_2"


def test_uploaded_file_names_stay_in_their_folder() -> None:
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name(".bashrc") == "bashrc"
    assert safe_file_name("my photo (1).jpg") == "my_photo__1_.jpg"


def test_paths_outside_the_workspace_are_refused(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    assert workspace.inside(workspace.root / "renders") == workspace.root / "renders"
    with pytest.raises(ValueError, match="outside the workspace"):
        workspace.inside(workspace.root / ".." / "elsewhere")


def test_too_few_usable_photos_keep_nothing_and_a_name_keeps_its_photos(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    photos = world_photos(tmp_path / "photos")
    with pytest.raises(ValueError, match=r"2 usable photo\(s\)"):
        workspace.add_photos("hero", photos[:4], size=64)
    folder, rejected = workspace.add_photos("hero", photos, size=64)
    assert len(list(folder.glob("photo-?.png"))) == 5 and len(list(folder.glob("*.mask.png"))) == 5 and not rejected
    assert workspace.add_photos("hero", photos, size=64)[0] == folder  # the same photos again: same run
    with pytest.raises(ValueError, match="exists with other photos"):
        workspace.add_photos("hero", photos[2:], size=64)


def test_cancel_keeps_a_checkpoint_and_training_again_continues(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    workspace.add_photos("hero", world_photos(tmp_path / "photos"), size=64)
    model = jobs.studio_model(workspace)
    settings = jobs.training_settings(workspace, model, "hero", "person", "files", steps=12)
    cancel = threading.Event()

    def cancel_after_three_steps() -> None:
        while len(workspace.losses("hero")) < 3:
            threading.Event().wait(0.05)
        cancel.set()

    threading.Thread(target=cancel_after_three_steps, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        jobs.train(settings, cancel)
    stopped = workspace.losses("hero")[-1][0]
    assert 3 <= stopped < 12 and list((workspace.identity_folder("hero") / "checkpoints").iterdir())
    identity = jobs.train(settings, threading.Event())
    assert identity.is_file() and [step for step, _ in workspace.losses("hero")] == list(range(1, 13))


def test_long_jobs_wait_their_turn_in_one_queue(session) -> None:
    from gradio_client.utils import Status

    client, workspace, _ = session
    form = generation_form("a photo of a person on the beach")
    form[-3:] = [False, False, 0.0]  # T2V only: the queue is what is tested
    form[2], form[5] = 16, 12  # a first job long enough to be seen running
    first = client.submit(*form, api_name="/generate")
    second = client.submit(*[*form[:8], 4, *form[9:]], api_name="/generate")
    seen = set()
    while not (first.done() and second.done()):
        seen.add((first.status().code, second.status().code))
        time.sleep(0.02)
    running = {Status.PROCESSING, Status.PROGRESS}
    assert any({a, b} & running and Status.IN_QUEUE in {a, b} for a, b in seen), seen  # one ran, one waited
    assert first.result()[5] != second.result()[5]  # both rendered, seeds 3 and 4

    def started(folder: Path) -> float:  # a render folder's request is written as its job starts
        return (folder / "request.json").stat().st_mtime

    renders = {seed: max((workspace / "renders").glob(f"*-seed{seed}*"), key=started) for seed in (3, 4)}
    earlier, later = sorted(renders.values(), key=started)
    assert started(later) >= (earlier / "generation.mp4").stat().st_mtime  # never two at once


def test_a_restarted_server_shows_what_was_made(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "workspace")
    pt = export_a1111(Identity("pal", torch.randn(4, 64), class_word="dog"), tmp_path / "pal.pt")
    workspace.import_identity(pt, class_word="dog")  # an A1111 file keeps no class word
    generation = {"prompt": "a photo of <pal> dog", "num_frames": 8, "num_inference_steps": 2, "seed": 5}
    folder = jobs.render(workspace, jobs.studio_model(workspace), generation, face_vcd=False, upscale_strength=None)
    with studio(workspace.root) as url:  # a server that never saw them being made
        client = Client(url, verbose=False)
        table, _, _, history, _ = client.predict(api_name="/refresh")
        assert ["pal", "dog", "uploaded", "pal.safetensors"] in table["data"]
        assert history["value"].startswith(folder.name)
        assert read_video(Path(client.predict(history["value"], api_name="/reopen")[0])).shape[0] == 8


def test_the_chosen_model_is_remembered_and_checked(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    assert jobs.studio_model(workspace).key == "world"  # the built-in default, offline
    jobs.choose_model(workspace, jobs.CUSTOM, {"base_model": "my/sd15", "motion_lora": "", "device": "cuda"})
    chosen = jobs.studio_model(Workspace(tmp_path / "ws"))
    assert chosen.key == jobs.CUSTOM and chosen.settings.base_model == "my/sd15"
    assert "base my/sd15" in chosen.describe() and "cuda" in chosen.describe()
    with pytest.raises(ValueError, match="dtype"):
        jobs.choose_model(workspace, jobs.CUSTOM, {"base_model": "my/sd15", "dtype": "fp8"})
    with pytest.raises(ValueError, match="base model"):
        jobs.choose_model(workspace, jobs.CUSTOM, {"base_model": ""})
