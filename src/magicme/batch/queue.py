"""The batch's work queue: the output folder itself, shared by every worker.

A worker walks the jobs in order and takes the first one that is ready (its needs are done)
and that no other worker holds (`io.locks.exclusive`: an OS lock that dies with its
process, so a killed worker never leaves a stale claim). It runs the job's chain, scores
the final video, and writes `done.json`; a job that raises writes `failed.json` with its
error, and the others go on. So one worker, several processes on one machine, or
`torchrun`'s ranks all run the same loop (a Ray task runs one step of it, `take`), and a slow
or dead worker holds back nothing but its own job, which the next run (or another worker)
finishes: `magicme run`'s fingerprints skip its finished stages.
"""

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicme.batch.manifest import Job, Manifest
from magicme.chain import fingerprint
from magicme.io.files import write_json
from magicme.io.locks import BusyError, exclusive

log = logging.getLogger("magicme")
POLL_SECONDS = 1.0


def input_files(job: Job) -> list[Path]:
    """What a job reads from outside the batch: photos to learn from or score against, identity files given."""
    photos = [job.chain["training"]["photos"]] if "training" in job.chain else []
    given = [spec.rpartition("=")[2] for spec in job.chain.get("model", {}).get("identities", [])]
    return [Path(path) for path in [*photos, *given, job.references] if path and Path(path).exists()]


@dataclass
class JobState:
    state: str  # done, failed, running, waiting (on a need), left
    error: str | None = None
    finished: float | None = None  # when it was done (time.time())


class Queue:
    """The jobs of one manifest and their markers under its output folder."""

    def __init__(self, manifest: Manifest, started: float) -> None:
        self.manifest, self.started = manifest, started  # failures older than `started` are retried
        self.by_name = {job.name: job for job in manifest.jobs}
        self._keys: dict[str, str] = {}

    def key(self, job: Job) -> str:
        """What a job's done marker must match: its settings, the content of what it reads from outside
        the batch, and the keys of the jobs it needs (a retrained identity makes its clips pending)."""
        if job.name not in self._keys:
            settings = {"job": [job.chain, job.evaluation], "needs": [self.key(self.by_name[n]) for n in job.needs]}
            own = [path for path in input_files(job) if not path.is_relative_to(self.manifest.output_dir)]
            self._keys[job.name] = fingerprint(settings, own)
        return self._keys[job.name]

    def folder(self, job: Job) -> Path:
        return self.manifest.output_dir / job.name

    def done_marker(self, job: Job) -> dict[str, Any] | None:
        """The job's `done.json`, if it finished with the settings and inputs it has now."""
        path = self.folder(job) / "done.json"
        if not path.is_file():
            return None
        marker = json.loads(path.read_text())
        return marker if marker["key"] == self.key(job) else None

    def done(self, job: Job) -> bool:
        return self.done_marker(job) is not None

    def failure(self, job: Job) -> str | None:
        """This run's error for the job, or None (an earlier run's failure is tried again)."""
        marker = self.folder(job) / "failed.json"
        if not marker.is_file() or marker.stat().st_mtime < self.started:
            return None
        return json.loads(marker.read_text())["error"]

    def state(self, job: Job) -> JobState:
        if marker := self.done_marker(job):
            return JobState("done", finished=marker["finished"])
        if (error := self.failure(job)) is not None:
            return JobState("failed", error)
        if (self.folder(job) / "running.json").is_file() and self._held(job):
            return JobState("running")
        if not self.ready(job):
            return JobState("waiting")
        return JobState("left")

    def _held(self, job: Job) -> bool:
        """Whether a live worker holds the job (taking its lock for an instant tells)."""
        try:
            with exclusive(self.folder(job) / "job"):
                return False
        except BusyError:
            return True

    def work(
        self,
        run_job: Callable[[Job, Path], None],
        on_change: Callable[[], None] = lambda: None,
        run_together: Callable[[list[Job]], None] | None = None,
    ) -> None:
        """Take and run ready jobs until none is left that this worker could run; with `run_together`,
        up to the manifest's `train_together` ready training jobs at once."""
        while True:
            progressed, blocked = self.fail_orphans(), False
            for job in self.manifest.jobs:
                if self.settled(job):
                    continue
                if not self.ready(job):
                    blocked = True  # another worker may be finishing what it needs
                    continue
                try:
                    with ExitStack() as held:
                        held.enter_context(exclusive(self.folder(job) / "job"))
                        if not self.done(job):
                            partners = self._claim_partners(job, held) if run_together else []
                            self._run([job, *partners], run_job, run_together)
                    progressed = True
                    on_change()
                except BusyError:
                    blocked = True  # another worker holds it
            if not progressed and not blocked:
                return
            if not progressed:
                time.sleep(POLL_SECONDS)

    def take(
        self, names: list[str], run_job: Callable[[Job, Path], None], run_together: Callable[[list[Job]], None]
    ) -> None:
        """Run the named jobs (several: training jobs learned together), as a scheduler that chose them
        asks (`batch.ray_executor`): each under its lock, skipping those done meanwhile. Raises
        BusyError if another worker holds one of them."""
        with ExitStack() as held:
            for name in names:
                held.enter_context(exclusive(self.folder(self.by_name[name]) / "job"))
            jobs = [self.by_name[name] for name in names if not self.done(self.by_name[name])]
            if jobs:
                self._run(jobs, run_job, run_together)

    def fail_orphans(self) -> bool:
        """Mark the jobs whose needs failed as failed too; whether there were any."""
        orphans = False
        for job in self.manifest.jobs:
            if self.settled(job):
                continue
            failed_needs = [need for need in job.needs if self.failure(self.by_name[need]) is not None]
            if failed_needs:
                self.fail(job, f"needs {', '.join(failed_needs)}, which failed")
                orphans = True
        return orphans

    def settled(self, job: Job) -> bool:
        """Done, or failed in this run: nothing for a worker to do."""
        return self.done(job) or self.failure(job) is not None

    def ready(self, job: Job) -> bool:
        return all(self.done(self.by_name[need]) for need in job.needs)

    def _claim_partners(self, job: Job, held: ExitStack) -> list[Job]:
        """Up to `train_together` - 1 more ready training jobs that no worker holds, now held by this one."""
        partners: list[Job] = []
        if "training" not in job.chain:
            return partners
        for other in self.manifest.jobs:
            if len(partners) + 1 >= self.manifest.train_together:
                break
            taken = self.settled(other) or not self.ready(other)
            if other is job or "training" not in other.chain or taken:
                continue
            try:
                held.enter_context(exclusive(self.folder(other) / "job"))
            except BusyError:
                continue
            partners.append(other)
        return partners

    def _run(
        self, jobs: list[Job], run_job: Callable[[Job, Path], None], run_together: Callable[[list[Job]], None] | None
    ) -> None:
        started, names = time.perf_counter(), ", ".join(job.name for job in jobs)
        for job in jobs:
            (self.folder(job) / "failed.json").unlink(missing_ok=True)
            write_json({"started": time.time(), "worker": os.getpid()}, self.folder(job) / "running.json")
        log.info("batch: %s: running", names)
        try:
            if len(jobs) == 1:
                run_job(jobs[0], self.folder(jobs[0]))
            else:
                run_together(jobs)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # one job's failure is reported; the others go on
            if len(jobs) == 1:
                log.error("batch: %s: failed: %s", names, error)
                self.fail(jobs[0], f"{type(error).__name__}: {error}", traceback.format_exc())
                return
            log.warning("batch: %s failed together (%s); running each alone", names, error)
            alone = True
        else:
            alone = False
        finally:
            for job in jobs:
                (self.folder(job) / "running.json").unlink(missing_ok=True)
        if alone:
            for job in jobs:
                self._run([job], run_job, run_together)
            return
        seconds = round(time.perf_counter() - started, 2)
        for job in jobs:
            marker = {"key": self.key(job), "seconds": seconds, "finished": time.time(), "worker": os.getpid()}
            write_json(marker, self.folder(job) / "done.json")

    def fail(self, job: Job, error: str, trace: str = "") -> None:
        write_json({"error": error, "traceback": trace}, self.folder(job) / "failed.json")

    def states(self) -> dict[str, JobState]:
        return {job.name: self.state(job) for job in self.manifest.jobs}

    def summary(self, states: dict[str, JobState]) -> dict[str, Any]:
        """Counts of `states` by state, throughput and time left, and every failed job with its error."""
        counts = {name: 0 for name in ("done", "running", "waiting", "left", "failed")}
        for state in states.values():
            counts[state.state] += 1
        finished_now = [s for s in states.values() if s.finished is not None and s.finished >= self.started]
        elapsed = max(time.time() - self.started, 1e-9)
        per_hour = 3600 * len(finished_now) / elapsed if finished_now else 0.0
        remaining = counts["running"] + counts["waiting"] + counts["left"]
        return {
            "jobs": len(states),
            **counts,
            "jobs_per_hour": round(per_hour, 1),
            "seconds_left": round(3600 * remaining / per_hour) if per_hour else None,
            "failed_jobs": {name: state.error for name, state in states.items() if state.state == "failed"},
        }
