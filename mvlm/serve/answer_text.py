"""One answer's text as its tokens arrive: what may be shown now, and whether a stop string has ended it.

The final text is `generate_answers`' (decoded without special tokens, cut at the first stop string,
stripped), so a served answer equals a benchmark's or the chat CLI's. While the answer grows, text is shown
only once no later token can take it back: trailing whitespace (the final strip may drop it), the start
of a possible stop string, and half a UTF-8 character are held until the next token settles them. The
pieces shown therefore add up to the final text exactly.

Stop strings are looked for in the text decoded *with* special tokens, as `mvlm.inference`'s stopping
does, so that a template's `</s>` or `<|im_end|>` is seen though the answer never shows it. Only the last
few tokens are decoded for that (a stop string that has just appeared lies within as many tokens as it has
bytes), and the visible text only for a streamed answer, so that each step costs the same however long
the answer has grown; the whole answer is decoded once, at its end.
"""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase

from mvlm.inference.stopping import cut_at_stops

REPLACEMENT_CHARACTER = "\ufffd"
"""What a tokenizer decodes half a multi-byte character to."""
STOP_WINDOW_SLACK = 8
"""Tokens decoded before a stop string's longest possible span (its byte count), for context."""


class AnswerText:
    """The text of one answer being generated, token by token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], stream: bool = True):
        self.tokenizer = tokenizer
        self.stops = [stop for stop in stops if stop]
        self.stream = stream
        """Whether `add` returns text as it settles (else only `final` is wanted)."""
        self.window = max((len(stop.encode("utf-8")) for stop in self.stops), default=0) + STOP_WINDOW_SLACK
        self.token_ids: list[int] = []
        self.shown = ""
        """The text handed out so far; always a prefix of the final text."""
        self.stopped = False
        """A stop string has appeared: the answer is complete."""

    def add(self, token_id: int) -> str:
        """Take the next token; return the text that can be shown now (often empty; always, unless streaming)."""
        self.token_ids.append(token_id)
        if self.stops:
            raw = self.tokenizer.decode(self.token_ids[-self.window:], skip_special_tokens=False)
            self.stopped = any(stop in raw for stop in self.stops)
        if self.stopped or not self.stream:
            return ""
        settled = self._settled(self._visible().lstrip())
        if len(settled) > len(self.shown) and settled.startswith(self.shown):
            new, self.shown = settled[len(self.shown):], settled
            return new
        return ""

    def final(self) -> str:
        """The whole answer: cut at the first stop string and stripped, as `generate_answers` returns it."""
        return self._visible().strip()

    def rest(self) -> str:
        """What is still to show once the answer is complete (the held-back end)."""
        final = self.final()
        return final[len(self.shown):] if final.startswith(self.shown) else ""

    def _visible(self) -> str:
        return cut_at_stops(self.tokenizer.decode(self.token_ids, skip_special_tokens=True), self.stops)

    def _settled(self, text: str) -> str:
        """`text` without the end that a later token may still change or remove."""
        text = text.rstrip().rstrip(REPLACEMENT_CHARACTER)
        held = max((keep for stop in self.stops for keep in range(1, min(len(stop) - 1, len(text)) + 1)
                    if stop.startswith(text[-keep:])), default=0)
        return text[: len(text) - held].rstrip()
