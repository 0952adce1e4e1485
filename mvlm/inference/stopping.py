"""Stopping at a template's stop string, for every tokenizer, and never showing it."""

from __future__ import annotations

from typing import Any, Sequence, TextIO

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, StopStringCriteria, TextStreamer


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the earliest of `stops` (unstripped)."""
    cut = min((text.index(stop) for stop in stops if stop in text), default=len(text))
    return text[:cut]


def cut_at_stop(text: str, stop_str: str | None) -> str:
    """`text` up to the first `stop_str` (the model may write the stop string, or run past it in a batch)."""
    return cut_at_stops(text, [stop_str] if stop_str else []).strip()


class DecodedTextStop(StoppingCriteria):
    """Stops each row once its decoded text contains the stop string.

    transformers' `StopStringCriteria` matches the stop string against the token strings of the vocabulary,
    and cannot be built for tokenizers whose vocabulary it cannot read back as text (word-level and
    WordPiece tokenizers raise a ValueError). Decoding the generated tokens works for every tokenizer the
    answer is decoded with anyway; special tokens are kept so that a stop string such as `</s>` is seen.
    The criterion sees only generated ids: `LlavaForCausalLM.generate` hands the language model embeddings,
    not prompt ids.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_str: str):
        self.tokenizer = tokenizer
        self.stop_str = stop_str

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=False)
        return torch.tensor([self.stop_str in text for text in texts], dtype=torch.bool, device=input_ids.device)


def stop_criteria(tokenizer: PreTrainedTokenizerBase, stop_str: str | None) -> StoppingCriteriaList:
    """The criterion that stops generation at `stop_str`: transformers' where it can be built, else text-based."""
    if not stop_str:
        return StoppingCriteriaList()
    try:
        return StoppingCriteriaList([StopStringCriteria(tokenizer, [stop_str])])
    except ValueError:  # a vocabulary StopStringCriteria cannot map to strings (word-level, WordPiece, ...)
        return StoppingCriteriaList([DecodedTextStop(tokenizer, stop_str)])


class StopStringStreamer(TextStreamer):
    """TextStreamer that writes to `output` and never shows the stop string or anything after it.

    Text that might be the start of the stop string is held back until the next token settles it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_str: str | None, output: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_str = stop_str
        self.output = output
        self.pending = ""
        self.stopped = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.stopped:
            self.pending += text
            shown, self.pending = self._split_pending(stream_end)
            self.output.write(shown)
        if stream_end:
            self.output.write("\n")
            self.pending, self.stopped = "", False
        self.output.flush()

    def _split_pending(self, stream_end: bool) -> tuple[str, str]:
        """(text safe to show now, text held back)."""
        stop = self.stop_str
        if not stop:
            return self.pending, ""
        if stop in self.pending:
            self.stopped = True
            return self.pending[: self.pending.index(stop)], ""
        if stream_end:
            return self.pending, ""
        for keep in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if stop.startswith(self.pending[-keep:]):
                return self.pending[:-keep], self.pending[-keep:]
        return self.pending, ""
