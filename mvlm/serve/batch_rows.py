"""The rows of one generated batch: each request's own stop strings, token limit, text and cancellation.

transformers' `generate` decodes the whole batch until every row is done; which rows are done is what a
stopping criterion answers each step (a row marked done gets pad tokens from then on and is never marked
back). `BatchRows` is that criterion: each step it hands every running row its newest token, and the row
decides, by its own request's rules, whether it has ended — its stop strings, its `max_tokens`, the
end-of-sequence token, or its client having gone away. A row that ends tells its request at once (its
answer does not wait for the batch), and its text is streamed as it grows.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Sequence, Union

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from mvlm.inference import EncodedPrompt
from mvlm.serve.answer_text import AnswerText
from mvlm.serve.api_errors import ApiError


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """More of the answer's text (streamed requests show it at once)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Finished:
    """The answer is complete."""

    text: str
    finish_reason: str
    """"stop" (a stop string or the end-of-sequence token) or "length" (max_tokens reached)."""
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Failed:
    """The request could not be answered (out of memory, shutdown, a bug); `error` is what to reply."""

    error: ApiError


Event = Union[TextDelta, Finished, Failed]


MIN_SAMPLING_TEMPERATURE = 1e-5
"""Below this a temperature is greedy: dividing logits by it would overflow them (and change no choice)."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: temperature 0 is greedy (top_p and seed then change nothing)."""

    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_SAMPLING_TEMPERATURE


@dataclasses.dataclass(eq=False)
class Job:
    """One request as the engine runs it; `deliver` receives its events (from the engine's thread)."""

    prompt: EncodedPrompt
    max_tokens: int
    stops: Sequence[str]
    """Every stop string: the template's and the request's."""
    deliver: Callable[[Event], None]
    sampling: Sampling = Sampling()
    stream: bool = False
    """Whether its text is wanted as it grows (TextDelta events), or only whole (Finished)."""
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set when the client has gone: the row is stopped at the next step, or never started."""

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.input_ids)

    def batch_key(self) -> Any:
        """Jobs with equal keys can share a batch: one `generate` applies one temperature and top_p to all.
        A seeded job runs alone, so that its seed alone decides its tokens."""
        if self.sampling.greedy:
            return ("greedy",)
        if self.sampling.seed is not None:
            return ("seeded", id(self))
        return ("sample", self.sampling.temperature, self.sampling.top_p)


class Row:
    """A job's place in a running batch."""

    def __init__(self, job: Job, tokenizer: PreTrainedTokenizerBase):
        self.job = job
        self.text = AnswerText(tokenizer, job.stops, stream=job.stream)
        self.done = False
        self.finish_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.text.token_ids)

    def step(self, token_id: int, eos_ids: set[int]) -> None:
        """Take this row's newest token."""
        if self.job.cancelled.is_set():
            self.finish("cancelled")
            return
        if token_id in eos_ids:
            self.text.token_ids.append(token_id)
            self.finish("stop")
            return
        shown = self.text.add(token_id)
        if shown:
            self.job.deliver(TextDelta(shown))
        if self.text.stopped:
            self.finish("stop")
        elif self.completion_tokens >= self.job.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        """End the row; tell its job (a cancelled job's client is gone: it is told nothing)."""
        self.done, self.finish_reason = True, reason
        if reason == "cancelled":
            return
        rest = self.text.rest() if self.job.stream else ""
        if rest:
            self.job.deliver(TextDelta(rest))
        self.job.deliver(Finished(self.text.final(), reason, self.job.prompt_tokens, self.completion_tokens))

    def fail(self, error: ApiError) -> None:
        self.done, self.finish_reason = True, "error"
        if not self.job.cancelled.is_set():
            self.job.deliver(Failed(error))


class BatchRows(StoppingCriteria):
    """The stopping criterion of a batch: row r is done when its own request says so.

    `generate` hands it the new tokens only (prompts go in as embeddings), so column -1 is each row's
    newest token. `lock` guards the tokenizer, which request threads use at the same time.
    """

    def __init__(self, rows: Sequence[Row], eos_ids: set[int], lock: threading.Lock, abort: threading.Event,
                 abort_error: ApiError):
        self.rows = list(rows)
        self.eos_ids = eos_ids
        self.lock = lock
        self.abort = abort
        self.abort_error = abort_error
        """What every unfinished row is answered with once `abort` is set (the server is stopping)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        with self.lock:
            for row, token_id in zip(self.rows, newest):
                if row.done:
                    continue
                if self.abort.is_set():
                    row.fail(self.abort_error)
                else:
                    row.step(token_id, self.eos_ids)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)
