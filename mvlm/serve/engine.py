"""The batching scheduler: requests that arrive together are decoded together, in one `generate`.

One thread owns the model. It takes the oldest waiting request and, with it, up to `max_batch_size - 1`
more that decode alike (greedy with greedy, or the same temperature and top_p), left-pads their prompts
into one batch (`mvlm.inference`: rows then get the tokens they would get alone) and runs one `generate`
for all of them. Each row ends by its own request's rules (`mvlm.serve.batch_rows`) and is answered the
moment it ends; the batch ends when its last row does, and the next batch is formed from whoever waits.

Requests that arrive while a batch runs wait for it to end (no joining mid-decode: that would need a
decode loop of our own instead of transformers' `generate`, which every model family here is tested
with). Clients whose answers ended with the batch come back some milliseconds apart; so that they are
not split into a batch of the quick ones and a batch of the rest (a split that would then persist), the
scheduler waits up to `batch_wait_s` for as many requests as it expects — those already waiting when
the batch ended plus the rows that ended with it — before it starts a smaller batch. Requests that
arrive together (less than `BURST_GAP_S` apart) go into the same batch, so a burst after a quiet spell
is not split into its first request and the rest; a client alone waits only that gap.

A full queue refuses at once (429). Out of memory during a batch answers that batch's unfinished
requests with a 503 that says so, frees the cache, and the next batch runs as usual.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteriaList

from mvlm.inference import batch_pixel_values, generation_config, input_device, left_padded_batch
from mvlm.model.modeling import LlavaForCausalLM
from mvlm.serve.api_errors import RATE_LIMIT, SERVER_ERROR, ApiError
from mvlm.serve.batch_rows import BatchRows, Job, Row

logger = logging.getLogger(__name__)
BURST_GAP_S = 0.005
"""Requests that arrive less than this apart arrive together: a batch waits for the next one."""


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", type=SERVER_ERROR, code="shutting_down")


class Engine:
    """Owns the model; `submit` jobs from any thread, `start` and `stop` the scheduler thread."""

    def __init__(self, model: LlavaForCausalLM, tokenizer: PreTrainedTokenizerBase, *, max_batch_size: int = 8,
                 max_queue: int = 256, batch_wait_s: float = 0.05, tokenizer_lock: threading.Lock | None = None):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size} and {max_queue}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.tokenizer_lock = tokenizer_lock or threading.Lock()
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Row] = []
        self.condition = threading.Condition()
        self.stopping = False
        self.abort = threading.Event()
        """Set by `stop`: running rows are answered with 503 at their next step."""
        self.thread: threading.Thread | None = None
        self.expected_batch = 1
        """How many requests the next batch can expect soon: those waiting when the previous batch ended, and
        the rows that ended with it (their clients are about to come back)."""
        self.counts: collections.Counter = collections.Counter()
        self.last_arrival = 0.0

    # ---------------------------------------------------------------- from request threads

    def submit(self, job: Job) -> None:
        """Queue a job; an ApiError (429) when `max_queue` requests wait already, (503) when stopping."""
        with self.condition:
            if self.stopping:
                raise shutting_down()
            self._drop_cancelled()
            if len(self.waiting) >= self.max_queue:
                self.counts["refused_queue_full"] += 1
                raise ApiError(429, f"the server's queue is full ({self.max_queue} requests waiting, --max-queue); "
                               "retry later", type=RATE_LIMIT, code="queue_full")
            self.waiting.append(job)
            self.last_arrival = time.monotonic()
            self.condition.notify_all()

    def stats(self) -> dict[str, Any]:
        """Queue and batch counters, for /health and the benchmark."""
        with self.condition:
            counts = dict(self.counts)
            batches = counts.get("batches", 0)
            return {
                "waiting": len(self.waiting),
                "running": sum(not row.done for row in self.running),
                "max_batch_size": self.max_batch_size,
                "mean_batch_size": round(counts.get("batched_rows", 0) / batches, 3) if batches else None,
                **counts,
                "generate_seconds": round(counts.get("generate_seconds", 0.0), 3),
            }

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="mvlm-engine", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, answer waiting ones with 503, stop running rows at their next step, join."""
        with self.condition:
            self.stopping = True
            self.abort.set()
            waiting, self.waiting = list(self.waiting), collections.deque()
            self.condition.notify_all()
        for job in waiting:
            Row(job, self.tokenizer).fail(shutting_down())
        if self.thread is not None:
            self.thread.join(timeout)

    # ---------------------------------------------------------------- the scheduler thread

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.stopping

    def _loop(self) -> None:
        while True:
            try:
                rows = self._take_batch()
            except Exception:  # a bug in scheduling: log it and go on (its jobs stay queued)
                logger.exception("forming a batch failed")
                time.sleep(0.1)
                continue
            if rows is None:
                return
            self._run(rows)

    def _take_batch(self) -> list[Row] | None:
        """The next batch's rows (the oldest waiting job and those that can join it); None when stopping."""
        with self.condition:
            while True:
                self._drop_cancelled()
                if self.stopping:
                    return None
                batch = self._gather() if self.waiting else []
                if batch:
                    break
                if not self.waiting:
                    self.condition.wait()
            for job in batch:
                self.waiting.remove(job)
            self.running = [Row(job, self.tokenizer) for job in batch]
            return self.running

    def _gather(self) -> list[Job]:
        """Jobs for a batch (called with the condition held): as many as expected, or more while they keep
        arriving less than `BURST_GAP_S` apart, waiting at most `batch_wait_s`; empty if every waiting
        client left meanwhile, or the engine is stopping."""
        deadline = time.monotonic() + self.batch_wait_s
        while True:
            batch = self._compatible()
            now = time.monotonic()
            quiet_in = self.last_arrival + BURST_GAP_S - now
            enough = len(batch) >= min(self.max_batch_size, self.expected_batch)
            if len(batch) >= self.max_batch_size or now >= deadline or (enough and quiet_in <= 0):
                return batch
            self.condition.wait(min(deadline - now, quiet_in) if enough else deadline - now)
            self._drop_cancelled()
            if self.stopping or not self.waiting:
                return []

    def _compatible(self) -> list[Job]:
        if not self.waiting:
            return []
        key = self.waiting[0].batch_key()
        return [job for job in self.waiting if job.batch_key() == key][: self.max_batch_size]

    def _drop_cancelled(self) -> None:
        for job in [job for job in self.waiting if job.cancelled.is_set()]:
            self.waiting.remove(job)
            self.counts["cancelled"] += 1

    def _run(self, rows: Sequence[Row]) -> None:
        started = time.perf_counter()
        out_of_memory = False
        try:
            self.generate(rows)
            logger.debug("batch of %d: %s tokens in %.3f s", len(rows), [row.completion_tokens for row in rows],
                         time.perf_counter() - started)
        except torch.OutOfMemoryError as error:
            logger.warning("out of memory in a batch of %d: %s", len(rows), error)
            message = (f"out of memory while generating a batch of {len(rows)} request(s) "
                       f"({sum(row.job.prompt_tokens for row in rows)} prompt tokens): retry, or start the server "
                       f"with a smaller --max-batch-size (now {self.max_batch_size}) or --max-new-tokens")
            self._fail_unfinished(rows, ApiError(503, message, type=SERVER_ERROR, code="out_of_memory"))
            out_of_memory = True
        except Exception as error:  # a bug: answer this batch, keep serving the next
            logger.exception("generation failed for a batch of %d", len(rows))
            self._fail_unfinished(rows, ApiError(500, f"generation failed: {type(error).__name__}: {error}",
                                                 type=SERVER_ERROR, code="generation_failed"))
        finally:
            for row in rows:
                if not row.done:  # generate ended before the row's own limit (it cannot; never leave a client)
                    row.finish("length")
            last_step = max(row.completion_tokens for row in rows)
            returning = sum(row.finish_reason in ("stop", "length") and row.completion_tokens == last_step
                            for row in rows)
            with self.condition:
                self.running = []
                self.expected_batch = max(1, returning + len(self.waiting))
                self.counts.update(batches=1, batched_rows=len(rows), out_of_memory=int(out_of_memory),
                                   completion_tokens=sum(row.completion_tokens for row in rows))
                self.counts.update(
                    {"cancelled": "cancelled", "error": "failed"}.get(row.finish_reason, "completed") for row in rows)
                self.counts["generate_seconds"] += time.perf_counter() - started
        if out_of_memory:  # here, not in `except`: the traceback's frames hold the batch's tensors until then
            self._free_memory()

    def _fail_unfinished(self, rows: Sequence[Row], error: ApiError) -> None:
        for row in rows:
            if not row.done:
                row.fail(error)

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def generate(self, rows: Sequence[Row]) -> None:
        """One `generate` for the batch; each row ends (and is answered) by `BatchRows`."""
        prompts = [row.job.prompt for row in rows]
        sampling = rows[0].job.sampling
        temperature = 0.0 if sampling.greedy else sampling.temperature
        config = generation_config(self.model, self.tokenizer, temperature=temperature, top_p=sampling.top_p,
                                   max_new_tokens=max(row.job.max_tokens for row in rows))
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        if sampling.seed is not None and not sampling.greedy:
            torch.manual_seed(sampling.seed)
        device = input_device(self.model)
        input_ids, attention_mask = left_padded_batch(prompts, self.tokenizer.pad_token_id, device)
        self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=batch_pixel_values(prompts, device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([BatchRows(rows, eos_ids, self.tokenizer_lock, self.abort,
                                                              shutting_down())]),
        )
