"""`magicme batch` on the tiny model: a manifest expanded into jobs, run in this process and by
torchrun's ranks to the same files, a failed job reported while the rest finish, identities
trained together (the executors on the world model, a worker killed: test_batch_world.py)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from magicme.batch.manifest import ManifestError, expand
from magicme.batch.ray_executor import RaySettings
from magicme.batch.runner import BatchFailed, run_batch
from magicme.io.video import read_video

CLIPS = ["clips/astro/0-seed0", "clips/astro/0-seed1", "clips/alice/0-seed0", "clips/alice/0-seed1"]


def manifest_record(tiny_model, astronaut_folder: Path, identity_file: Path, output_dir: Path) -> dict:
    """One identity learned from photos, one given as a file; one prompt, two seeds; T2V, Face VCD, eval."""
    base, motion = tiny_model
    return {
        "output_dir": str(output_dir),
        "model": {"base_model": str(base), "motion_adapter": str(motion)},
        "identities": {
            "astro": {"photos": str(astronaut_folder), "class_word": "woman"},
            "alice": {"file": str(identity_file), "references": str(astronaut_folder)},
        },
        "prompts": ["a photo of {identity} on the beach"],
        "seeds": [0, 1],
        "training": {"masks": "offline", "resolution": 64, "steps": 2} | {"batch_size": 1, "validation_every": 0},
        "generation": {"num_frames": 4, "height": 64, "width": 64, "num_inference_steps": 2},
        "refine_face": {"num_inference_steps": 2, "guide_size": 64},
        "evaluation": {"clip_model": "none", "dino_model": "none", "face_model": "none"},
    }


def write_manifest(record: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(record))
    return path


def outputs(output_dir: Path, clips: list[str]) -> dict[str, torch.Tensor]:
    return {clip: read_video(output_dir / clip / "refine_face.mp4") for clip in clips}


SEED_0 = [clip for clip in CLIPS if clip.endswith("seed0")]


@pytest.fixture(scope="module")
def finished(tiny_model, astronaut_folder: Path, identity_file: Path, tmp_path_factory) -> tuple[dict, Path]:
    """The manifest run once in this process: its record and output folder."""
    folder = tmp_path_factory.mktemp("batch")
    record = manifest_record(tiny_model, astronaut_folder, identity_file, folder / "out")
    run_batch(write_manifest(record, folder / "batch.yaml"))
    return record, folder / "out"


def test_a_manifest_expands_into_training_then_clips_that_need_it(tiny_model, astronaut_folder, identity_file) -> None:
    record = manifest_record(tiny_model, astronaut_folder, identity_file, Path("out"))
    jobs = {job.name: job for job in expand(record).jobs}
    assert list(jobs) == ["identities/astro", *CLIPS]
    clip = jobs["clips/astro/0-seed1"]
    assert clip.needs == ("identities/astro",) and jobs["clips/alice/0-seed0"].needs == ()
    assert clip.chain["generation"]["prompt"] == "a photo of <astro> woman on the beach"
    assert clip.chain["generation"]["seed"] == 1 and clip.chain["refine_face"]["seed"] == 1
    assert clip.chain["refine_face"]["prompt"] == "close up photo of a <astro> woman"
    assert clip.chain["model"]["identities"] == ["astro=out/identities/astro/training/astro.safetensors"]
    assert jobs["identities/astro"].chain["training"]["base_model"] == record["model"]["base_model"]  # learned on it
    assert jobs["clips/alice/0-seed0"].chain["generation"]["prompt"] == "a photo of <alice> woman on the beach"
    assert "identities" not in record["model"]  # the manifest is not changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompts": ["a photo of alice"]}, "each with {identity}"),
        ({"identities": {"x y": {"photos": "p"}}}, "letters, digits"),
        ({"identities": {"bob": {"photos": "p", "file": "f"}}}, "one of them"),
        ({"identities": {"bob": {"file": "missing.safetensors", "class_word": "man"}}}, "no photos to score"),
        ({"seeds": "0"}, "list of integers"),
        ({"stages": []}, "unknown key"),
        ({"train_together": 0}, "whole number"),
    ],
)
def test_bad_manifests_are_clear_errors(
    tiny_model, astronaut_folder, identity_file, change: dict, message: str
) -> None:
    record = manifest_record(tiny_model, astronaut_folder, identity_file, Path("out")) | change
    with pytest.raises(ManifestError, match=message):
        expand(record)


def test_the_batch_finishes_every_job_and_a_rerun_skips_them(finished, tmp_path: Path, caplog) -> None:
    record, output_dir = finished
    report = json.loads((output_dir / "report.json").read_text())
    assert report["done"] == 5 and report["failed"] == 0 and report["jobs"] == 5
    assert set(json.loads((output_dir / "status.json").read_text())) >= {"done", "running", "left", "jobs_per_hour"}
    for clip in CLIPS:
        metrics = json.loads((output_dir / clip / "metrics.json").read_text())
        assert metrics["frames"] == 4 and metrics["flicker"] >= 0
    caplog.set_level(logging.INFO, logger="magicme")
    run_batch(write_manifest(record, tmp_path / "again.yaml"))
    assert "running" not in caplog.text  # every job done before with the same settings


def test_under_torchrun_every_rank_is_a_worker_and_the_files_are_the_same(finished, tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m magicme batch`: both ranks take jobs from the one queue, rank 0
    reports, and the videos equal those of one process at the same CPU threads."""
    import socket

    record, output_dir = finished
    out = tmp_path / "ranks"
    manifest = write_manifest(record | {"output_dir": str(out), "seeds": [0]}, tmp_path / "ranks.yaml")
    with socket.socket() as probe:  # a free port for the ranks to meet on
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([*launch, "-m", "magicme", "batch", str(manifest)], env=env, check=True, capture_output=True)
    report = json.loads((out / "report.json").read_text())
    assert report["done"] == 3 and report["failed"] == 0
    ranks, one = outputs(out, SEED_0), outputs(output_dir, SEED_0)
    assert all(torch.equal(ranks[clip], one[clip]) for clip in SEED_0)


@pytest.mark.parametrize("executor", ["in-process", "ray"])
def test_a_failed_job_is_reported_and_the_rest_finish(finished, executor: str, tmp_path: Path) -> None:
    """A job's own error is reported, not retried: on Ray too, where retries are for dead workers."""
    record, _ = finished
    ray = RaySettings(workers=2) if executor == "ray" else None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a photo")
    identities = {"broken": {"photos": str(broken)}, "alice": record["identities"]["alice"]}  # broken runs first
    manifest = record | {"output_dir": str(tmp_path / "out"), "identities": identities, "seeds": [0]}
    with pytest.raises(BatchFailed, match="2 of 3 jobs failed") as error:
        run_batch(write_manifest(manifest, tmp_path / "broken.yaml"), ray=ray)
    assert "no usable photo" in str(error.value) and "needs identities/broken, which failed" in str(error.value)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["failed_jobs"]) == {"identities/broken", "clips/broken/0-seed0"}
    assert report["done"] == 1 and (tmp_path / "out" / "clips/alice/0-seed0/metrics.json").is_file()


def test_identities_train_together_and_a_failed_group_trains_each_alone(finished, tmp_path: Path, caplog) -> None:
    """`train_together: 2` learns two identities on one model, each as it learns alone; a group with a
    corrupt photo folder in it falls back to one at a time, and only that identity fails."""
    from magicme.identity.files import load_identity

    record, output_dir = finished
    photos = record["identities"]["astro"]
    fast = {key: value for key, value in record.items() if key not in ("refine_face", "evaluation")}
    fast |= {"seeds": [0], "train_together": 2}
    together = fast | {"output_dir": str(tmp_path / "together"), "identities": {"astro": photos, "bert": photos}}
    caplog.set_level(logging.INFO, logger="magicme")
    run_batch(write_manifest(together, tmp_path / "together.yaml"))
    assert "training: astro, bert together" in caplog.text
    alone = load_identity(output_dir / "identities/astro/training/astro.safetensors").embeddings
    packed = load_identity(tmp_path / "together/identities/astro/training/astro.safetensors").embeddings
    assert (packed - alone).abs().max() < 1e-5
    assert (tmp_path / "together/clips/bert/0-seed0/generation.mp4").is_file()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a photo")
    identities = {"broken": {"photos": str(broken)}, "astro": photos, "bert": photos}
    mixed = fast | {"output_dir": str(tmp_path / "mixed"), "identities": identities, "train_together": 3}
    with pytest.raises(BatchFailed, match="2 of 6 jobs failed"):
        run_batch(write_manifest(mixed, tmp_path / "mixed.yaml"))
    assert "failed together" in caplog.text
    report = json.loads((tmp_path / "mixed" / "report.json").read_text())
    assert set(report["failed_jobs"]) == {"identities/broken", "clips/broken/0-seed0"} and report["done"] == 4


def test_a_job_another_worker_holds_does_not_hold_back_the_rest(tmp_path: Path) -> None:
    """The queue on its own, with jobs that only record their turn: a held job is passed over, the
    jobs after it run, and it runs once its worker lets go."""
    import threading

    from magicme.batch.manifest import Job, Manifest
    from magicme.batch.queue import Queue
    from magicme.io.locks import exclusive

    jobs = [Job("a", {"n": 1}), Job("b", {"n": 2}, needs=("a",)), Job("c", {"n": 3})]
    queue, order = Queue(Manifest(tmp_path, jobs), started=0.0), []
    held, release = threading.Event(), threading.Event()

    def other_worker() -> None:
        with exclusive(tmp_path / "a" / "job"):
            held.set()
            release.wait()

    thread = threading.Thread(target=other_worker)
    thread.start()
    held.wait()
    threading.Timer(1.0, release.set).start()  # the other worker gives "a" up after a second
    queue.work(lambda job, folder: order.append(job.name))
    thread.join()
    assert order == ["c", "a", "b"]  # c did not wait for a; b waited for what it needs
    assert all(queue.state(job).state == "done" for job in jobs)


def test_a_changed_setting_makes_pending_only_the_jobs_that_depend_on_it(finished) -> None:
    from magicme.batch.queue import Queue

    record, _ = finished
    retrained = record | {"training": record["training"] | {"steps": 3}}
    queue = Queue(expand(retrained), started=0.0)
    states = {job.name: queue.state(job).state for job in queue.manifest.jobs}
    assert states["identities/astro"] == "left"
    assert states["clips/astro/0-seed0"] == states["clips/astro/0-seed1"] == "waiting"  # on the new identity
    assert states["clips/alice/0-seed0"] == states["clips/alice/0-seed1"] == "done"


def test_ray_options_are_checked_before_any_work(finished, tmp_path: Path, monkeypatch, capsys) -> None:
    from magicme.cli import main

    record, _ = finished
    manifest = write_manifest(record | {"output_dir": str(tmp_path / "out")}, tmp_path / "batch.yaml")
    assert main(["batch", str(manifest), "--address", "auto"]) == 2
    assert "--address and --gpus-per-job are for --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    assert main(["batch", str(manifest), "--executor", "ray"]) == 2
    assert "pip install 'magicme[ray]'" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("done.json"))
