"""`magicme batch`: run a manifest's jobs with one worker or several, with a live summary.

`--workers 1` runs the jobs in this process. `--workers N` starts N worker processes on this
machine, each taking jobs from the output folder (`batch.queue`), while this process
prints the summary; under `torchrun` (or `accelerate launch`) every rank is a worker and
rank 0 prints it; with `--executor ray` each job is a task on a Ray cluster
(`batch.ray_executor`). The summary is also written to `status.json` in the output folder (for
other tools), and the end state of every job to `report.json`.
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from magicme.batch.manifest import Job, expand
from magicme.batch.queue import JobState, Queue
from magicme.batch.ray_executor import RaySettings, run_on_ray
from magicme.chain import run_stages, train_together
from magicme.io.files import write_json
from magicme.settings import EvalSettings, from_mapping, read_config_file

log = logging.getLogger("magicme")


class BatchFailed(ValueError):
    """Some jobs failed; the rest finished. The message names each failed job and its error."""


def run_job(job: Job, folder: Path) -> None:
    """One job: its chain (stages already done are skipped), then the scores of its final video."""
    video = run_stages(job.chain, job.name)
    if video is None or job.evaluation is None:
        return
    from magicme.eval.evaluate import Entry, Evaluator

    settings = from_mapping(EvalSettings, job.evaluation, f"{job.name} [evaluation]")
    result = Evaluator(settings).evaluate(Entry(video, job.prompt, Path(job.references or "")))
    write_json(result, folder / "metrics.json")


def train_jobs_together(jobs: list[Job]) -> None:
    """Training jobs learned at once on one model (the manifest's `train_together`)."""
    train_together([job.chain for job in jobs], [job.name for job in jobs])


def progress_line(summary: dict[str, Any]) -> str:
    left = summary["seconds_left"]
    eta = "unknown" if left is None else f"{left // 60}m{left % 60:02d}s"
    return (
        f"{summary['done']}/{summary['jobs']} done, {summary['running']} running, {summary['failed']} failed, "
        f"{summary['waiting'] + summary['left']} left; {summary['jobs_per_hour']} jobs/h, about {eta} left"
    )


class Progress:
    """The live summary: a bar on the terminal and `status.json` beside the jobs."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.bar = tqdm(total=len(queue.manifest.jobs), desc="batch", unit="job")

    def update(self, states: dict[str, JobState] | None = None) -> dict[str, Any]:
        """Show `states` (default: read them now)."""
        return self._show(self.queue.states() if states is None else states)

    def close(self) -> dict[str, Any]:
        states = self.queue.states()
        summary = self._show(states)
        self.bar.close()
        report = summary | {"states": {name: vars(state) for name, state in states.items()}}
        write_json(report, self.queue.manifest.output_dir / "report.json")
        return summary

    def _show(self, states: dict[str, JobState]) -> dict[str, Any]:
        summary = self.queue.summary(states)
        write_json(summary, self.queue.manifest.output_dir / "status.json")
        self.bar.n = summary["done"] + summary["failed"]
        self.bar.set_postfix_str(progress_line(summary), refresh=True)
        return summary


def worker_environment(workers: int) -> dict[str, str]:
    """Each worker's share of the CPU threads: workers that each take every core slow one another down
    (unless OMP_NUM_THREADS is set already)."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))} | os.environ


def leave_process_group() -> tuple[int, int]:
    """This process's (rank, world size) under torchrun or `accelerate launch`, which then stop being
    its distributed setup: each rank is a worker running whole jobs alone, so a training job must
    not wait in `Accelerator()` for the other ranks to join a process group. A GPU rank keeps its
    own GPU."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK"):
            os.environ.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return rank, world


def run_batch(
    manifest_path: Path,
    workers: int = 1,
    started: float | None = None,
    worker_only: bool = False,
    ray: RaySettings | None = None,
) -> Path:
    """Run the manifest's jobs (on a Ray cluster, given `ray`); returns the output folder. Raises
    BatchFailed if any job failed."""
    manifest = expand(read_config_file(manifest_path), str(manifest_path))
    manifest.output_dir.mkdir(parents=True, exist_ok=True)
    queue = Queue(manifest, started if started is not None else time.time())
    rank, world = leave_process_group()
    if worker_only or (world > 1 and rank > 0):
        queue.work(run_job, run_together=train_jobs_together)
        return manifest.output_dir
    progress = Progress(queue)
    if ray is not None:
        run_on_ray(queue, manifest_path, ray, progress.update)
    elif workers == 1 or world > 1:
        queue.work(run_job, progress.update, train_jobs_together)
    else:
        command = [sys.executable, "-m", "magicme", "batch", str(manifest_path), "--worker", str(queue.started)]
        children = [subprocess.Popen(command, env=worker_environment(workers)) for _ in range(workers)]
        while any(child.poll() is None for child in children):
            progress.update()
            time.sleep(2)
        queue.work(run_job, progress.update, train_jobs_together)  # whatever a dead worker left
    summary = progress.close()
    if summary["failed_jobs"]:
        failed = "; ".join(f"{name}: {error}" for name, error in summary["failed_jobs"].items())
        raise BatchFailed(
            f"{summary['failed']} of {summary['jobs']} jobs failed ({failed}); the others finished. "
            f"Fix them and run again: finished work is kept (report: {manifest.output_dir / 'report.json'})"
        )
    return manifest.output_dir
