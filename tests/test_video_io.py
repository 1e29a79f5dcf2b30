from pathlib import Path

import pytest
import torch

from magicme.io.video import read_video, save_video


def gradient_clip(frames: int = 6, height: int = 40, width: int = 56) -> torch.Tensor:
    """A smooth moving gradient: compresses well, so mp4 round trips stay close."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    clip = [torch.stack(torch.broadcast_tensors((x + t / frames) % 1, y, (x + y) / 2)) for t in range(frames)]
    return torch.stack(clip)  # (F, 3, H, W)


@pytest.mark.parametrize(("name", "tolerance"), [("clip.mp4", 0.05), ("clip.gif", 0.1), ("frames", 1 / 255)])
def test_round_trip_keeps_count_size_and_content(tmp_path: Path, name: str, tolerance: float) -> None:
    frames = gradient_clip()
    back = read_video(save_video(frames, tmp_path / name, fps=8))
    assert back.shape == frames.shape
    assert (back - frames).abs().mean() < tolerance


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    path.write_bytes(b"finished work")
    with pytest.raises(ValueError, match="unknown video format"):
        save_video(gradient_clip(), path)
    assert path.read_bytes() == b"finished work"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]


def test_frames_must_be_rgb_frames() -> None:
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        save_video(torch.zeros(4, 1, 8, 8), Path("never.mp4"))


def test_a_full_disk_is_an_error_and_keeps_the_previous_video(tmp_path: Path) -> None:
    """ffmpeg hits the file-size limit (as on a full disk) mid-write: an error, the old video kept."""
    import subprocess
    import sys

    path = tmp_path / "clip.mp4"
    save_video(torch.rand(2, 3, 32, 32), path)
    before = path.read_bytes()
    script = f"""
import resource, signal, torch
from magicme.io.video import save_video
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
save_video(torch.rand(16, 3, 256, 256, generator=torch.Generator().manual_seed(0)), {str(path)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "is the disk full?" in result.stderr and "nothing was replaced" in result.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"], "no partial file left behind"


def test_unwritable_outputs_are_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    from magicme.io import video

    monkeypatch.setattr(video.os, "access", lambda path, mode: Path(path) != tmp_path / "locked")
    (tmp_path / "locked").mkdir()
    with pytest.raises(ValueError, match="locked is not writable"):
        video.check_video_path(tmp_path / "locked" / "new" / "clip.mp4")
    video.check_video_path(tmp_path / "open" / "clip.mp4")  # a folder still to be made is fine


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from magicme.io.files import atomic_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_by_kill = tmp_path / f".clip.{int(dead.stdout)}.partial.mp4"
    left_by_kill.write_bytes(b"half a video")
    live = tmp_path / f".clip.{os.getppid()}.partial.mp4"  # our parent: alive, maybe writing
    live.write_bytes(b"being written")
    with atomic_path(tmp_path / "clip.mp4") as partial:
        Path(partial).write_bytes(b"video")
    assert not left_by_kill.exists() and live.exists()
    assert (tmp_path / "clip.mp4").read_bytes() == b"video"
