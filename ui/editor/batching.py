"""Many users at once: requests that arrive while the pipeline is busy are rendered together.

:class:`RenderQueue` sits in front of the pipeline. Each request thread submits a job and waits;
whichever waiting thread finds the pipeline free takes the oldest job plus every other waiting
job with the same key (steps, size, guidance) up to ``max_cells`` cells (edits, sweeps and mixes
alike), and runs them as one batch (``vslerp.ui.render.render_many``: each job keeps its own
seed, θ, α or weights and image mean). A
lone request starts at once: nothing waits for company, so one user is not slowed down.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["RenderQueue"]


@dataclass(eq=False)  # a job is itself (its payload holds tensors)
class _Job:
    key: tuple  # jobs with equal keys may share a batch
    cells: int  # cells the job renders
    payload: object  # what the batch function receives
    waiting: object = None  # waiting(ahead): told how many renders are ahead while the job waits
    stop: object = None  # stop() -> True: the job leaves the queue before it starts
    done: bool = False
    result: object = None
    error: BaseException | None = None
    batch_size: int = field(default=0)  # jobs in the batch that rendered it


class RenderQueue:
    """Run ``run_batch(payloads) -> results`` on batches of compatible waiting jobs, one batch at a time.

    max_cells: cells in one batch (a larger job runs alone); 1 renders every job on its own.
    isolate: exceptions that, raised by a batch of several jobs, may be one job's fault: the
    jobs are then run one by one, so each gets its own result or error.
    ``batches`` counts the batches run, ``largest`` the most jobs in one.
    """

    def __init__(self, run_batch, max_cells: int = 16, isolate: tuple = (ValueError, TypeError)) -> None:
        if int(max_cells) < 1:
            raise ValueError(f"max_cells must be ≥ 1, got {max_cells}")
        self._run = run_batch
        self.max_cells = int(max_cells)
        self.isolate = isolate
        self.batches = 0
        self.largest = 0
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._busy = False
        self._running = 0  # jobs in the batch being rendered

    def ahead(self) -> int:
        """The jobs rendering or waiting now."""
        with self._cond:
            return self._running + len(self._pending)

    def wake(self) -> None:
        """Wake the waiting jobs (one was asked to stop)."""
        with self._cond:
            self._cond.notify_all()

    def submit(self, key: tuple, cells: int, payload, waiting=None, stop=None):
        """Render ``payload`` (alone or in a batch) and return its result; raises its error.

        waiting(ahead) is called while the job waits (ahead: the jobs rendering or queued before
        it); stop() polled then: True takes the job out of the queue (``cancelled`` raised).
        """
        from vslerp.ui.editor.messages import RenderCancelled

        job = _Job(key, int(cells), payload, waiting, stop)
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()  # (for whoever watches the queue)
            while not job.done:
                if self._busy:
                    queued = job in self._pending  # else it is in the batch being rendered
                    if queued and job.stop is not None and job.stop():
                        self._pending.remove(job)
                        raise RenderCancelled
                    if queued and job.waiting is not None:
                        job.waiting(self._running + self._pending.index(job))
                    self._cond.wait()  # woken when a batch ends, a job arrives or wake() is called
                    continue
                batch = self._take()
                self._busy, self._running = True, len(batch)
                self._cond.release()
                try:
                    self._execute(batch)
                finally:
                    self._cond.acquire()
                    self._busy, self._running = False, 0
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """The oldest job and the waiting jobs that may join it (called with the lock held)."""
        first = self._pending[0]
        batch, total = [first], first.cells
        for job in self._pending[1:]:
            if job.key == first.key and total + job.cells <= self.max_cells:
                batch.append(job)
                total += job.cells
        taken = set(map(id, batch))
        self._pending = [job for job in self._pending if id(job) not in taken]
        return batch

    def _execute(self, batch: list[_Job]) -> None:
        with self._cond:
            self.batches += 1
            self.largest = max(self.largest, len(batch))
        try:
            results = self._run([job.payload for job in batch])
        except self.isolate as err:
            if len(batch) == 1:
                batch[0].error = err
            else:  # whose value was it? each job alone
                for job in batch:
                    self._execute([job])
                return
        except BaseException as err:  # handed to every request of the batch, re-raised in its thread
            for job in batch:
                job.error = err
        else:
            for job, result in zip(batch, results, strict=True):
                job.result = result
        for job in batch:
            job.done, job.batch_size = True, len(batch)

