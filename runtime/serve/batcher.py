"""Micro-batching: one worker thread merges queued requests into runtime calls of at most `max_batch` rows.

Each request's rows wait in one bounded queue; the worker takes the rows that arrived within `max_wait_s` of the
oldest waiting one, up to `max_batch` rows, and makes ONE `Runtime.predict` call (which sorts by length and
routes each row through its own layers). The event loop only parses, queues and awaits. Rows over `max_queue`
are refused with 429 rather than queued without limit. Requests at different budgets (the budget dial) share a
call: each row gets its own gate offset. With a latency policy (latency.py), each batch's budget is decided when
it is taken, from the queue behind it and the measured cost of the calls so far (`costs`, updated after each).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from hadskip.errors import HadSkipError
from hadskip.runtime.serve.latency import CostModel, LatencyPolicy, Load
from hadskip.runtime.serve.metrics import Metrics
from hadskip.runtime.serve.request import ApiError, BackendFailure, Overloaded
from hadskip.runtime.text import EmptyTextError

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: our lines share its format


@dataclass
class Job:
    rows: list
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    budget: float | None = None  # the request's budget (None: the server's)
    max_layers: int | None = None  # the request's hard cap on layers per row (None: none)
    run_budget: float | None = None  # the budget its rows run at (None: the server's); lowered when it is taken

    def __post_init__(self):
        self.run_budget = self.budget


@dataclass
class JobResult:
    predictions: list[dict]
    queue_s: float
    inference_s: float
    batch_rows: int
    logits: list | None = None  # per row, the head's raw scores (when the runtime keeps them)
    budget: float | None = None  # the budget its rows ran at (None: the trained gates)


class Batcher:
    """One worker thread that merges queued requests into runtime calls of at most `max_batch` rows.

    `predict(rows, batch_size)` is `Runtime.predict`. A batch that fails is retried one request at a time,
    so one request's failure is not its neighbours' (the retry costs nothing while the backend is healthy).
    """

    def __init__(self, predict: Callable, max_batch: int, max_wait_s: float, max_queue: int, metrics: Metrics,
                 policy: LatencyPolicy | None = None, default_budget: float | None = None):
        self.predict, self.max_batch, self.max_wait_s, self.max_queue = predict, max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self.policy, self.default_budget = policy, default_budget  # default: the server's --budget (None: trained)
        self.costs = CostModel()  # seconds per call, row and layer-row, measured on this server's calls
        self.budget_now = default_budget if policy is None else policy.default_layers  # the latest batch's
        self.load: Load | None = None  # the queue when the latest batch was taken
        self.queue: collections.deque[Job] = collections.deque()
        self.queued_rows = 0
        self.busy_rows = 0  # rows in the runtime call now running
        self.cond = threading.Condition()
        self.closing = False
        self.rows_done, self.layers_done = 0, 0  # rows answered and the layers they ran (/info served_avg_layers)
        self.thread = threading.Thread(target=self._work, name="hadskip-batcher", daemon=True)

    def start(self) -> Batcher:
        self.thread.start()
        return self

    def submit(self, rows: list, budget: float | None = None, max_layers: int | None = None) -> asyncio.Future:
        """Queue one request's rows (called on the event loop); raises Overloaded when the queue is full.
        An empty queue always takes a request, so no request is too big to ever run."""
        loop = asyncio.get_running_loop()
        job = Job(rows, loop.create_future(), loop, budget=budget, max_layers=max_layers)
        with self.cond:
            if self.closing:
                raise ApiError(503, "the server is shutting down", "unavailable", {"Retry-After": "1"})
            if self.queued_rows and self.queued_rows + len(rows) > self.max_queue:
                raise Overloaded(self.queued_rows, self.max_queue)
            self.queue.append(job)
            self.queued_rows += len(rows)
            self.cond.notify()
        return job.future

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self.cond:
            while not self.queue and not self.closing:
                self.cond.wait()
            if not self.queue:
                return None  # closing and drained
            batch = [self.queue.popleft()]
            rows = len(batch[0].rows)
            deadline = batch[0].enqueued + self.max_wait_s  # the oldest row waits at most max_wait
            while rows < self.max_batch:
                if self.queue:
                    if rows + len(self.queue[0].rows) > self.max_batch:
                        break
                    job = self.queue.popleft()
                    batch.append(job)
                    rows += len(job.rows)
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self.closing:
                    break
                self.cond.wait(remaining)
            self.queued_rows -= rows
            self.busy_rows = rows
            now = time.perf_counter()
            newest = self.queue[-1] if self.queue else batch[-1]
            self.load = Load(rows, self.queued_rows, now - batch[0].enqueued, now - newest.enqueued, self.max_batch)
        return [j for j in batch if not j.future.cancelled()]  # a cancelled request needs no answer

    def _work(self) -> None:
        batch: list[Job] | None = []
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    if batch:
                        self._plan(batch)
                        self._run(batch, retry_alone=len(batch) > 1)
                finally:
                    with self.cond:
                        self.busy_rows = 0
        finally:  # normally nothing is left here; if the worker died, nobody may wait forever
            with self.cond:
                self.closing = True
                left, self.queued_rows = [*(batch or []), *self.queue], 0
                self.queue.clear()
            for job in left:  # answered jobs ignore this (see _resolve)
                _resolve(job, exc=ApiError(503, "the inference worker stopped", "unavailable"))

    def _plan(self, batch: list[Job]) -> None:
        """Each job's run_budget: what it asked for, or lower under the latency policy (never higher)."""
        if self.policy is None:
            return
        chosen, budgets = self.policy.plan(self.load, self.costs.costs(), [j.budget for j in batch])
        for job, b in zip(batch, budgets, strict=True):
            job.run_budget = b
        top = max(self.policy.layers(j.budget) for j in batch)
        default = self.policy.default_layers
        self.budget_now = min(chosen, default) if chosen < top else default  # where default rows run now

    def _run(self, batch: list[Job], retry_alone: bool) -> None:
        rows = [r for j in batch for r in j.rows]
        start = time.perf_counter()
        try:
            extra = {}
            if any(j.run_budget is not None for j in batch):  # one budget per row; None rows run at the server's
                extra["budget"] = [j.run_budget for j in batch for _ in j.rows]
            if any(j.max_layers is not None for j in batch):  # one cap per row; None: no cap
                extra["max_layers"] = [j.max_layers for j in batch for _ in j.rows]
            preds = self.predict(rows, batch_size=self.max_batch, **extra)
            probs = getattr(preds, "probabilities", None)
            if probs is not None and not _all_finite(probs):
                raise HadSkipError("the model produced non-finite probabilities")
            dicts = preds.to_dicts()
            self.rows_done += len(dicts)
            ran = sum(d.get("num_layers", 0) for d in dicts)
            self.layers_done += ran
            self.costs.observe(len(dicts), ran, time.perf_counter() - start)
            failure = None
        except Exception as exc:  # any backend failure becomes a 424 for these requests, never a dead worker
            failure = exc
        elapsed = time.perf_counter() - start
        if isinstance(failure, EmptyTextError):  # a text the tokenizer leaves no token of: 422 for its request
            at, ok = 0, []
            for job in batch:
                bad = [i - at for i in failure.indices if at <= i < at + len(job.rows)]
                at += len(job.rows)
                if bad:
                    _resolve(job, exc=ApiError(422, f"inputs[{bad[0]}] is empty: no tokens after the tokenizer's "
                                                    "normalisation", "validation"))
                else:
                    ok.append(job)
            return self._run(ok, retry_alone=len(ok) > 1) if ok else None
        if failure is not None:
            self.metrics.batch(len(rows), len(batch), elapsed, ok=False)
            if retry_alone:
                for job in batch:
                    self._run([job], retry_alone=False)
                return
            log.error("runtime call on %d rows failed: %s", len(rows), failure, exc_info=failure)
            for job in batch:
                _resolve(job, exc=BackendFailure(failure))
            return
        self.metrics.batch(len(rows), len(batch), elapsed, ok=True, gates=getattr(preds, "gates", None),
                           truncated=sum(d["truncated"] for d in dicts))
        logits = getattr(preds, "logits", None)
        logits = None if logits is None else [[float(x) for x in row] for row in logits]
        at = 0
        for job in batch:
            n = len(job.rows)
            queue_s = start - job.enqueued
            self.metrics.queue_s.observe(queue_s)
            ran_at = self.default_budget if job.run_budget is None else job.run_budget
            self.metrics.budget_rows(self.budget_label(ran_at), n, lowered=self.lowered(job))
            _resolve(job, JobResult(dicts[at:at + n], queue_s, elapsed, len(rows),
                                    None if logits is None else logits[at:at + n], ran_at))
            at += n

    def budget_label(self, budget: float | None) -> str:
        """The metrics label of a budget: "trained" (offset 0), the server's budget or a dial point the policy
        steps to ("2.5"), or "other" (a client's own budget: labels stay a bounded set)."""
        if budget is None:
            return "trained"
        known = {self.default_budget, *(self.policy.budgets if self.policy else ())}
        return f"{budget:g}" if budget in known else "other"

    def lowered(self, job: Job) -> bool:
        return self.policy is not None and job.run_budget != job.budget


def _all_finite(a) -> bool:
    import numpy as np

    return bool(np.isfinite(a).all())


def _resolve(job: Job, result: JobResult | None = None, exc: BaseException | None = None) -> None:
    def settle():
        if job.future.done():  # the request was cancelled meanwhile
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop has closed (forced shutdown): nobody is waiting
        pass
