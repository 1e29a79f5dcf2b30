"""Hostile and broken inputs through the command line: each is refused with exit code 2 and one
line that says what is wrong, no traceback, no file left behind, and no code from a file run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magicme.cli import main
from magicme.identity.files import Identity, save_identity
from magicme.testing.tiny import TEXT_WIDTH

QUICK = ["--num-frames", "8", "--height", "64", "--width", "64", "--num-inference-steps", "1"]


class Payload:
    """Anything a pickle can only rebuild by running code."""


def write_pickle_with_code(path: Path, content: dict) -> str:
    torch.save({**content, "payload": Payload()}, path)
    return str(path)


def write_garbage(path: Path) -> str:
    path.write_bytes(b"\x17\x00\x00\x00\x00\x00\x00\x00{garbage" + bytes(64))
    return str(path)


def write_identity(path: Path, vectors: torch.Tensor, **metadata) -> str:
    return str(save_identity(Identity("eve", vectors, metadata=metadata), path))


def identity_with_lora_carrying_code(folder: Path) -> str:
    write_pickle_with_code(folder / "eve.lora.bin", {})
    return write_identity(folder / "eve.safetensors", VECTORS, lora="eve.lora.bin")


VECTORS = torch.randn(4, TEXT_WIDTH)
# case -> (what to change in a generate command, given the folder for bad files; words the message must hold)
CASES = {
    "garbage safetensors base model": (
        lambda d: {"--base-model": write_garbage(d / "sd.safetensors")},
        "not a readable",
    ),
    "base model .ckpt carrying code": (
        lambda d: {"--base-model": write_pickle_with_code(d / "sd.ckpt", {"state_dict": {}})},
        "contains code, not only tensors",
    ),
    "motion module .ckpt carrying code": (
        lambda d: {"--motion-adapter": write_pickle_with_code(d / "mm.ckpt", {})},
        "contains code, not only tensors",
    ),
    "uncached hub id while offline": (lambda d: {"--base-model": "nobody/no-such-model"}, "not in the local cache"),
    "more frames than the motion module has positions": (lambda d: {"--num-frames": "33"}, "--free-noise"),
    "garbage identity": (lambda d: {"--identity": write_garbage(d / "eve.safetensors")}, "not a readable"),
    "identity carrying code": (
        lambda d: {"--identity": write_pickle_with_code(d / "eve.pt", {"string_to_param": {"*": VECTORS}})},
        "contains code, not only tensors",
    ),
    "identity with NaN": (
        lambda d: {"--identity": write_identity(d / "eve.safetensors", VECTORS * float("nan"))},
        "NaN or infinite",
    ),
    "identity whose LoRA path leaves its folder": (
        lambda d: {"--identity": write_identity(d / "eve.safetensors", VECTORS, lora="../../etc/passwd")},
        "in its own folder",
    ),
    "identity whose LoRA carries code": (
        lambda d: {"--identity": identity_with_lora_carrying_code(d)},
        "contains code",
    ),
    "identity too long for the prompt": (
        lambda d: {"--identity": write_identity(d / "eve.safetensors", torch.randn(80, TEXT_WIDTH))},
        "would be cut off",
    ),
    "missing identity": (lambda d: {"--identity": str(d / "nobody.safetensors")}, "does not exist"),
    "motion LoRA carrying code": (
        lambda d: {"--motion-lora": write_pickle_with_code(d / "zoom.ckpt", {})},
        "contains code, not only tensors",
    ),
    "gamma out of range": (lambda d: {"--gamma": "1.5"}, "--gamma"),
    "size not a multiple of 8": (lambda d: {"--height": "60"}, "multiples of 8"),
    "unknown output format": (lambda d: {"--output": str(d.parent / "out" / "clip.avi")}, ".avi"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_line_and_exit_code_2(case: str, tiny_model, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad, out = tmp_path / "bad", tmp_path / "out"
    bad.mkdir()
    change, words = CASES[case]
    options = {"--base-model": str(tiny_model[0]), "--motion-adapter": str(tiny_model[1])}
    options |= {"--prompt": "a photo of <eve> woman", "--output": str(out / "clip.mp4")} | dict(
        zip(QUICK[::2], QUICK[1::2], strict=True)
    )
    options |= change(bad)
    if "--identity" not in options:
        options["--prompt"] = "a photo of a woman"
    capsys.readouterr()
    code = main(["generate", *(item for pair in options.items() for item in pair)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("magicme: error:")]
    assert code == 2 and len(errors) == 1, errors
    assert words in errors[0], errors[0]
    assert "Traceback" not in errors[0] and "weights_only" not in errors[0]
    assert not out.exists() or not list(out.iterdir()), "a refused run left files behind"
    assert not hasattr(Payload, "ran")


def write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def folder_with(path: Path, files: dict[str, str]) -> str:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return str(path)


# case -> (the command, given the folder for bad files and the tiny model; words the message must hold)
COMMAND_CASES = {
    "a video that is not one": (
        lambda d, m: ["upscale", write_text(d / "clip.mp4", "garbage"), "--prompt", "x", *m],
        "not a readable video",
    ),
    "a config that is not YAML": (lambda d, m: ["generate", "--config", write_text(d / "c.yaml", "a: [1")], "YAML"),
    "a config value of the wrong type": (
        lambda d, m: ["generate", "--config", write_text(d / "c.yaml", "generation: {num_frames: many}")],
        "--num-frames must be a whole number",
    ),
    "a folder that is no diffusers model": (
        lambda d, m: ["generate", "--base-model", folder_with(d / "sd", {"model_index.json": "{}"}), "--prompt", "x"],
        "not a diffusers model folder",
    ),
    "an empty photo folder": (lambda d, m: ["train", folder_with(d / "photos", {}), "--name", "x"], "no usable photo"),
}


@pytest.mark.parametrize("case", list(COMMAND_CASES))
def test_bad_input_to_any_command_is_one_line_and_exit_code_2(case: str, tiny_model, tmp_path: Path, capsys) -> None:
    command, words = COMMAND_CASES[case]
    model = ["--base-model", str(tiny_model[0]), "--motion-adapter", str(tiny_model[1])]
    capsys.readouterr()
    code = main(command(tmp_path, model))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("magicme: error:")]
    assert code == 2 and len(errors) == 1 and words in errors[0], errors


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(monkeypatch, capsys) -> None:
    import magicme.cli

    def crash(args) -> None:
        raise RuntimeError("something no one foresaw")

    monkeypatch.setattr(magicme.cli, "run_convert", crash)
    assert main(["convert", "a.pt", "b.pt"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("magicme: internal error: RuntimeError: something no one foresaw; full traceback in ")
    report = Path(line.rsplit(" ", 1)[-1])
    assert "raise RuntimeError" in report.read_text()
    report.unlink()


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_debug_shows_the_traceback(debug: list[str], monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("MAGICME_DEBUG", "0")
    assert main([*debug, "convert", str(tmp_path / "nobody.pt"), str(tmp_path / "x.pt")]) == 2
    assert ("Traceback" in capsys.readouterr().err) == bool(debug)


def test_a_full_disk_is_one_line_and_the_rerun_completes(tiny_model, tmp_path: Path) -> None:
    """The video write hits the file-size limit (as on a full disk): exit 2, no file under the final name;
    the same command without the limit then writes it."""
    output = tmp_path / "clip.mp4"
    argv = ["generate", "--base-model", str(tiny_model[0]), "--motion-adapter", str(tiny_model[1])]
    argv += ["--prompt", "a cat", *QUICK, "--output", str(output)]
    limited = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
from magicme.cli import main
sys.exit(main({argv!r}))
"""
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("magicme: error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "disk" in errors[0] and "full" in errors[0] and "Traceback" not in result.stderr
    assert not output.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]
    assert main(argv) == 0 and output.is_file()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from magicme.io.locks import exclusive
with exclusive(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_of_the_same_output_is_refused_until_the_first_ends(tiny_model, tmp_path: Path, capsys) -> None:
    """Another process writing clip.mp4 (killed with -9 at the end: its lock goes with it)."""
    output = tmp_path / "clip.mp4"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["generate", "--base-model", str(tiny_model[0]), "--motion-adapter", str(tiny_model[1])]
        argv += ["--prompt", "a cat", *QUICK, "--output", str(output)]
        assert main(argv) == 2
        assert f"being written by another magicme process (pid {holder.pid})" in capsys.readouterr().err
        assert not output.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0 and output.is_file()
    assert not list(tmp_path.glob(".*lock")), "the lock file is removed by its last holder"


def test_one_training_run_per_folder(tmp_path: Path) -> None:
    from magicme.identity.train import train_identity
    from magicme.io.locks import BusyError, exclusive
    from magicme.settings import TrainingSettings

    run = tmp_path / "run"
    with exclusive(run), pytest.raises(BusyError, match="being written by another magicme process"):
        train_identity(TrainingSettings(photos=str(tmp_path), name="x", output_dir=str(run)))


def run_limited(argv: list[str], max_file_bytes: int) -> subprocess.CompletedProcess:
    """`magicme ARGV` in a process that cannot write a file past `max_file_bytes`, as on a full disk."""
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes}))
from magicme.cli import main
sys.exit(main({argv!r}))
"""
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_and_the_rerun_finishes(
    tiny_model, astronaut_folder: Path, tmp_path: Path
) -> None:
    from magicme.identity.checkpoints import checkpoint_folders, load_latest_checkpoint
    from magicme.identity.files import load_identity

    def train(folder: Path, steps: int, *extra: str) -> list[str]:
        options = {"--name": "astro", "--class-word": "woman", "--masks": "offline", "--resolution": "64"}
        options |= {"--base-model": str(tiny_model[0]), "--output-dir": str(folder), "--batch-size": "2"}
        options |= {"--checkpoint-every": "2", "--validation-every": "0", "--steps": str(steps)}
        return ["train", str(astronaut_folder), *(item for pair in options.items() for item in pair), *extra]

    straight = tmp_path / "straight"
    assert main(train(straight, 4)) == 0
    run = tmp_path / "run"
    assert main(train(run, 2)) == 0
    biggest = max(path.stat().st_size for path in (run / "checkpoints").rglob("*") if path.is_file())
    result = run_limited(train(run, 4, "--resume"), biggest - 1)  # the step-4 checkpoint cannot be written
    errors = [line for line in result.stderr.splitlines() if line.startswith("magicme: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "disk is full" in errors[0], result.stderr[-2000:]
    assert [folder.name for folder in checkpoint_folders(run)] == ["step-000002"]
    assert load_latest_checkpoint(run).step == 2 and not list((run / "checkpoints").glob(".*"))
    assert main(train(run, 4, "--resume")) == 0
    expected = load_identity(straight / "astro.safetensors").embeddings
    assert torch.equal(load_identity(run / "astro.safetensors").embeddings, expected)


def test_kill_9_during_training_resumes_to_the_same_identity(
    tiny_model, astronaut_folder: Path, tmp_path: Path
) -> None:
    """SIGKILL as checkpoints are being written (no chance to clean up): the rerun never picks up a
    half-written checkpoint and ends, bit for bit, where an uninterrupted run ends."""
    import random
    import signal
    import time

    from magicme.identity.files import load_identity

    def train(folder: Path, *extra: str) -> list[str]:
        options = {"--name": "astro", "--class-word": "woman", "--masks": "offline", "--resolution": "64"}
        options |= {"--base-model": str(tiny_model[0]), "--output-dir": str(folder), "--batch-size": "2"}
        options |= {"--checkpoint-every": "1", "--validation-every": "0", "--steps": "12"}
        return ["train", str(astronaut_folder), *(item for pair in options.items() for item in pair), *extra]

    assert main(train(tmp_path / "straight")) == 0
    run = tmp_path / "run"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "magicme", *train(run)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((run / "checkpoints").glob("step-*")) and process.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # checkpoints are written every step from here on
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it was killed: nothing was tested"
    assert main(train(run, "--resume")) == 0
    expected = load_identity(tmp_path / "straight" / "astro.safetensors").embeddings
    assert torch.equal(load_identity(run / "astro.safetensors").embeddings, expected)
