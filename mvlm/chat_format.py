"""The one definition of what each separator style writes, as data.

A style's text is written in two places: `Conversation.pieces()` (mvlm.conversation) renders it as pieces
whose target flags become training labels and whose text is the inference prompt, and
`mvlm.convert.chat_template` turns it into the Jinja chat template of an exported processor, so that other
libraries render the same prompt. Both read the `Layout` below instead of each spelling the style out, so
the two cannot drift apart. `CHAT_TEMPLATE` has no layout: it is the tokenizer's own Jinja.

A layout is a few sequences of parts; a part is literal text, a `Slot` (a value the template or the turn
fills in) or an `IfSystem` group (written only when there is a system text).
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Callable, Union, cast


class SeparatorStyle(Enum):
    """How a template joins turns; each style but CHAT_TEMPLATE is one `Layout` in `LAYOUTS`."""

    TWO = auto()  # LLaVA v1 / Vicuna: "SYSTEM USER: q ASSISTANT: a</s>"
    MPT = auto()  # ChatML without newlines between turns, as LLaVA renders it
    PLAIN = auto()  # stage-1 captioning: image tokens + caption + sep
    LLAMA_2 = auto()  # "[INST] <<SYS>>..<</SYS>> q [/INST] a </s>"
    HEADER = auto()  # role headers from a format string (XTuner phi3_chat, Llama-3)
    CHAT_TEMPLATE = auto()  # the tokenizer's own jinja chat_template


class Slot(Enum):
    """A value a layout leaves open: the template's own text, or the turn's."""

    SYSTEM = auto()  # the system text (a leading system message replaces the template's)
    SYSTEM_HEADER = auto()  # the template's role_format written for its system role
    ROLE = auto()  # the turn's role, as the template names it (e.g. "USER")
    HEADER = auto()  # the template's role_format written for the turn's role
    SEP = auto()  # the template's sep
    SEP2 = auto()  # the template's sep2 ('' where it has none)
    TEXT = auto()  # the turn's text
    IMAGES = auto()  # only the turn's <image> tags, one per image (PLAIN drops the user's words)


TURN_SLOTS = frozenset({Slot.ROLE, Slot.HEADER, Slot.TEXT, Slot.IMAGES})
"""Slots that only a turn can fill; the prologue, written before any turn, may not use them."""


@dataclasses.dataclass(frozen=True)
class IfSystem:
    """Parts written only when the system text is not empty."""

    parts: tuple["Part", ...]


Part = Union[str, Slot, IfSystem]
Parts = tuple[Part, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a style writes, in the order it appears in a prompt.

    Each field is one piece of the rendered conversation (so one place where a label can change):
    `prologue` opens the prompt; every user turn is `user` (the first one `first_user`, where given); an
    assistant turn is `assistant_header`, then `answer` (the target the model learns), then
    `after_answer`. An open assistant turn, and the generation prompt of a chat template, is
    `assistant_header` alone.
    """

    prologue: Parts
    user: Parts
    assistant_header: Parts
    answer: Parts
    after_answer: Parts = ()
    first_user: Parts | None = None

    def __post_init__(self) -> None:
        turn_slots = sorted(slot.name for slot in set(_slots(self.prologue)) & TURN_SLOTS)
        if turn_slots:
            raise ValueError(f"a prologue is written before any turn; it cannot use {', '.join(turn_slots)}")
        if not self.answer or self.answer[-1] not in (Slot.SEP, Slot.SEP2):
            raise ValueError("an answer must end with the separator that stops it (Slot.SEP or Slot.SEP2)")

    def user_parts(self, index: int) -> Parts:
        """The parts of the user turn at message `index` (0 is the first)."""
        return self.first_user if index == 0 and self.first_user is not None else self.user

    @property
    def stop(self) -> Slot:
        """The separator that ends an answer: what a chat front-end stops streaming at."""
        return cast(Slot, self.answer[-1])  # checked in __post_init__


def _slots(parts: Parts) -> list[Slot]:
    found: list[Slot] = []
    for part in parts:
        if isinstance(part, Slot):
            found.append(part)
        elif isinstance(part, IfSystem):
            found += _slots(part.parts)
    return found


def write(parts: Parts, value: Callable[[Slot], str]) -> str:
    """The text of `parts`, each slot filled by `value` (the Python side; Jinja fills them itself)."""
    text = []
    for part in parts:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, Slot):
            text.append(value(part))
        elif value(Slot.SYSTEM):
            text.append(write(part.parts, value))
    return "".join(text)


S = Slot
LAYOUTS: dict[SeparatorStyle, Layout] = {
    SeparatorStyle.TWO: Layout(
        prologue=(S.SYSTEM, S.SEP),
        user=(S.ROLE, ": ", S.TEXT, S.SEP),
        assistant_header=(S.ROLE, ":"),
        answer=(" ", S.TEXT, S.SEP2),
    ),
    SeparatorStyle.MPT: Layout(
        prologue=(S.SYSTEM, S.SEP),
        user=(S.ROLE, S.TEXT, S.SEP),
        assistant_header=(S.ROLE,),
        answer=(S.TEXT, S.SEP),
    ),
    SeparatorStyle.PLAIN: Layout(
        prologue=(S.SYSTEM,),
        user=(S.IMAGES,),
        assistant_header=(),
        answer=(S.TEXT, S.SEP),
    ),
    # LLaVA's LLAMA_2: the system text opens the first user turn, and the very first `sep` is left out
    # (LLaVA's `ret.lstrip(sep)`).
    SeparatorStyle.LLAMA_2: Layout(
        prologue=(),
        first_user=("[INST] ", IfSystem(("<<SYS>>\n", S.SYSTEM, "\n<</SYS>>\n\n")), S.TEXT, " [/INST]"),
        user=(S.SEP, "[INST] ", S.TEXT, " [/INST]"),
        assistant_header=(),
        answer=(" ", S.TEXT, " ", S.SEP2),
    ),
    # Role headers: `header(role) + text + sep` per turn, then `sep2`; the answer and its `sep` are targets.
    SeparatorStyle.HEADER: Layout(
        prologue=(IfSystem((S.SYSTEM_HEADER, S.SYSTEM, S.SEP, S.SEP2)),),
        user=(S.HEADER, S.TEXT, S.SEP, S.SEP2),
        assistant_header=(S.HEADER,),
        answer=(S.TEXT, S.SEP),
        after_answer=(S.SEP2,),
    ),
}
"""Every separator style but CHAT_TEMPLATE, each defined once; both renderings read it."""
del S
