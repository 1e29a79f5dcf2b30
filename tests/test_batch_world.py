"""`magicme batch` on the world model: 3 held-out identities x 2 prompts x 2 seeds x (train, T2V,
Face VCD, eval), run in this process, by 2 worker processes and on a local Ray instance with 2 CPU
workers, each of the last two with a worker killed (SIGKILL) inside a clip's chain. Each executor
finishes every job to the same identities, videos and scores, with no partial file left."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from magicme.batch.runner import run_batch
from magicme.identity.files import load_identity
from magicme.io.video import read_video
from magicme.world.recipe import RECIPE

EXECUTORS = {"2 processes": ["--workers", "2"], "Ray, 2 workers": ["--executor", "ray", "--workers", "2"]}


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> tuple[dict, Path]:
    """The manifest (short training and sampling: equality is the point) run in this process."""
    work = tmp_path_factory.mktemp("world-batch")
    record = RECIPE.batch_manifest(work, identities=3, training_steps=10, inference_steps=4)
    record["generation"]["num_frames"] = 8
    manifest = work / "batch.yaml"
    manifest.write_text(yaml.safe_dump(record | {"output_dir": str(work / "in-process")}))
    run_batch(manifest)
    return record, work / "in-process"


def results(output_dir: Path) -> dict[str, object]:
    """What a batch made: each identity's embeddings, each clip's two videos, each clip's scores."""
    made: dict[str, object] = {}
    for identity in sorted(output_dir.glob("identities/*/training/*.safetensors")):
        made[identity.name] = load_identity(identity).embeddings
    for clip in sorted(output_dir.glob("clips/*/*")):
        for stage in ("generation", "refine_face"):
            made[f"{clip.relative_to(output_dir)}/{stage}"] = read_video(clip / f"{stage}.mp4")
        scores = json.loads((clip / "metrics.json").read_text())
        made[f"{clip.relative_to(output_dir)}/metrics"] = {k: v for k, v in scores.items() if k != "video"}
    return made


def kill_a_worker_inside_a_clip(out: Path, process: subprocess.Popen) -> tuple[int, Path]:
    """SIGKILL the worker of a clip job once the job's T2V video is written, so inside its Face VCD;
    returns (the worker's pid, the job's folder)."""
    while process.poll() is None:
        for marker in out.glob("clips/*/*/running.json"):
            if (marker.parent / "generation.mp4").is_file():
                try:
                    worker = json.loads(marker.read_text())["worker"]
                except FileNotFoundError:  # it finished meanwhile
                    continue
                os.kill(worker, signal.SIGKILL)
                return worker, marker.parent
        time.sleep(0.02)
    raise AssertionError("the batch ended before any worker was inside a clip's chain")


@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_a_killed_worker_loses_nothing_and_every_executor_makes_the_same_files(
    in_process, executor: str, tmp_path: Path
) -> None:
    """With 2 processes another worker takes the killed one's job; on Ray, Ray runs its task again."""
    record, first = in_process
    expected = results(first)
    assert len(expected) == 3 + 12 * 3 and json.loads((first / "report.json").read_text())["done"] == 15
    out, manifest = tmp_path / "out", tmp_path / "batch.yaml"
    manifest.write_text(yaml.safe_dump(record | {"output_dir": str(out)}))
    threads = str(torch.get_num_threads())  # the in-process run's: bit for bit needs the same float reductions
    options = [*EXECUTORS[executor], "--cpus-per-job", threads] if "ray" in EXECUTORS[executor] else EXECUTORS[executor]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
    command = [sys.executable, "-m", "magicme", "batch", str(manifest), *options]
    with open(tmp_path / "batch.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        killed, job = kill_a_worker_inside_a_clip(out, process)
        assert process.wait(timeout=600) == 0, (tmp_path / "batch.log").read_text()[-3000:]
    assert json.loads((out / "report.json").read_text())["done"] == 15
    assert json.loads((job / "done.json").read_text())["worker"] != killed  # another process finished its job
    assert not [path for path in out.rglob("*") if "partial" in path.name or path.name == "running.json"]
    made = results(out)
    assert made.keys() == expected.keys()
    for name, value in expected.items():
        same = torch.equal(made[name], value) if isinstance(value, torch.Tensor) else made[name] == value
        assert same, f"{executor}: {name} differs from the in-process run"
