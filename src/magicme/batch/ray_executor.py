"""`magicme batch --executor ray`: the manifest's jobs as tasks on a Ray cluster.

This process (the driver) submits one task for each job that is ready (what it needs is done),
so an identity is learned before the clips that use it; up to `train_together` ready training
jobs share a task. A task runs in a Ray worker the step a local worker runs (`Queue.take`):
the job's lock, its chain, then `done.json` or `failed.json`. A job that raises is a failure
of its own, reported and not retried. A worker that dies (SIGKILL, a lost node) is Ray's
failure: Ray runs the task again on another worker, up to `retries` times, and the job's
fingerprinted stages skip what the dead worker had finished.

Every node must see the output folder and the manifest's inputs at the same paths (a shared
filesystem), as every rank must under torchrun; relative paths in the manifest resolve
against the folder the batch was started in.
"""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicme.batch.manifest import expand
from magicme.batch.queue import POLL_SECONDS, BusyError, JobState, Queue
from magicme.settings import read_config_file

log = logging.getLogger("magicme")


@dataclass(frozen=True)
class RaySettings:
    """Where the tasks run and what each asks of the cluster."""

    address: str | None = None  # a running cluster ("auto", "ray://HOST:10001"); None: RAY_ADDRESS, or a local instance
    workers: int = 1  # CPU workers of a local instance
    cpus_per_job: int = 1  # each task's CPU threads, and its CPU requirement
    gpus_per_job: float | None = None  # None: 1 where the cluster has GPUs, else 0
    retries: int = 3  # reruns of a task whose worker died


def run_in_worker(manifest_path: str, names: list[str], started: float, folder: str) -> str:
    """A task's body, in a Ray worker: run the named jobs; "busy" if another worker holds one."""
    from magicme.batch.runner import run_job, train_jobs_together

    logging.basicConfig(level=logging.INFO, format="magicme: %(message)s")
    os.chdir(folder)  # the manifest's relative paths mean what they meant where the batch started
    queue = Queue(expand(read_config_file(Path(manifest_path)), manifest_path), started)
    try:
        queue.take(names, run_job, train_jobs_together)
    except BusyError:
        return "busy"
    return "ran"


def ready_groups(queue: Queue, states: dict[str, JobState], submitted: set[str]) -> list[list[str]]:
    """The jobs to submit now, as task-sized groups: ready, not held by a worker, not yet submitted."""
    ready = [job for job in queue.manifest.jobs if states[job.name].state == "left" and job.name not in submitted]
    training = [job.name for job in ready if "training" in job.chain]
    size = queue.manifest.train_together
    groups = [training[start : start + size] for start in range(0, len(training), size)]
    return groups + [[job.name] for job in ready if "training" not in job.chain]


def connect(settings: RaySettings) -> Any:
    """The `ray` module, connected to the cluster the settings name, or to a new local instance."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'magicme[ray]'") from None
    local = settings.address is None and "RAY_ADDRESS" not in os.environ
    cpus = {"num_cpus": settings.workers * settings.cpus_per_job} if local else {}
    ray.init(address=settings.address, include_dashboard=False, logging_level=logging.WARNING, **cpus)
    return ray


def run_on_ray(
    queue: Queue, manifest_path: Path, settings: RaySettings, on_change: Callable[[dict[str, JobState]], Any]
) -> None:
    """Run every job of the queue as Ray tasks, in the order their needs allow, until none is left;
    `on_change` gets each poll's job states."""
    ray = connect(settings)
    try:
        gpus = settings.gpus_per_job
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU") else 0
        task = ray.remote(run_in_worker).options(
            num_cpus=settings.cpus_per_job,
            num_gpus=gpus,
            max_retries=settings.retries,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(settings.cpus_per_job)}},
        )
        running: dict[Any, list[str]] = {}
        while True:
            queue.fail_orphans()
            states = queue.states()  # read once a poll: the summary shows them too
            submitted = {name for group in running.values() for name in group}
            for group in ready_groups(queue, states, submitted):
                running[task.remote(str(manifest_path.resolve()), group, queue.started, os.getcwd())] = group
            if not running:
                return
            finished, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in finished:
                _collect(ray, ref, running.pop(ref), queue, settings.retries)
            on_change(states)
    finally:
        ray.shutdown()


def _collect(ray: Any, ref: Any, names: list[str], queue: Queue, retries: int) -> None:
    """A finished task: its jobs wrote their own markers, unless every one of its workers died."""
    try:
        if ray.get(ref) == "busy":
            time.sleep(POLL_SECONDS)  # another process runs it: look again once it lets go
    except ray.exceptions.RayError as error:
        reason = f"its Ray worker died {retries + 1} times ({type(error).__name__})"
        log.error("batch: %s: %s", ", ".join(names), reason)
        for name in names:
            queue.fail(queue.by_name[name], reason)
