"""Chat templates with LLaVA's Conversation API, rendered as pieces that know whether they are targets.

LLaVA users' scripts do `conv = conv_templates[name].copy()`, `conv.append_message(conv.roles[0], text)`,
`conv.get_prompt()`; that API is kept. What is new is `pieces()`: the same rendering split into
(text, is_target) pieces, so that labels are built piece by piece (`mvlm.data.tokenize`) instead of
re-tokenizing the whole prompt and subtracting lengths. `get_prompt()` is only the pieces joined, so the
string and the labels cannot disagree.

Each template renders byte-for-byte as its source project does (LLaVA, Mipha, XTuner, LLaVA-NeXT). What a
separator style writes is defined once, in `mvlm.chat_format`, which the exported Jinja chat templates
(`mvlm.convert.chat_template`) are generated from as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from mvlm.chat_format import LAYOUTS, Parts, SeparatorStyle, Slot, write
from mvlm.constants import DEFAULT_IMAGE_TOKEN


class Piece(NamedTuple):
    """A span of the rendered conversation; `is_target` spans are what the model learns to produce."""

    text: str
    is_target: bool


@dataclasses.dataclass
class Conversation:
    """A chat template plus the messages of one conversation (LLaVA's API).

    `messages` holds `[role, text_or_None]` pairs; a `None` text is the open turn the model completes.
    """

    system: str
    roles: tuple[str, str]
    sep_style: SeparatorStyle
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    messages: list[list[Any]] = dataclasses.field(default_factory=list)
    offset: int = 0
    role_format: str = "{role}"
    """HEADER style: how a role header is written, e.g. `<|{role}|>\\n`."""
    system_role: str = "system"
    tokenizer: Any = None
    """CHAT_TEMPLATE style: the tokenizer whose `chat_template` renders the conversation."""

    def copy(self) -> "Conversation":
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages])

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        return "".join(piece.text for piece in self.pieces())

    @property
    def stop_str(self) -> str | None:
        """The text that ends an assistant answer (what a chat front-end stops streaming at)."""
        if self.sep_style is SeparatorStyle.CHAT_TEMPLATE:
            return None
        return self.sep2 if LAYOUTS[self.sep_style].stop is Slot.SEP2 else self.sep

    def pieces(self) -> list[Piece]:
        """The rendered conversation as pieces; joined, they are exactly `get_prompt()`."""
        messages = [(role, _message_text(message)) for role, message in self.messages[self.offset :]]
        for index, (role, message) in enumerate(messages):
            expected = self.roles[index % 2]
            if role != expected:
                raise ValueError(
                    f"template {self.version!r}: message {index} has role {role!r}, expected {expected!r} "
                    "(turns must alternate user, assistant, starting with the user)"
                )
            if message is None and (index != len(messages) - 1 or index % 2 == 0):
                raise ValueError(f"template {self.version!r}: only the last message may be open (None), "
                                 "and only if it is the assistant's")
        if self.sep_style is SeparatorStyle.CHAT_TEMPLATE:
            pieces = _render_chat_template(self, messages)
        else:
            pieces = _render_layout(self, messages)
        return [piece for piece in pieces if piece.text]

    def template_text(self, slot: Slot, speaker: int) -> str:
        """The template's own text for `slot` in a turn of `speaker` (0 the user, 1 the assistant); for
        SYSTEM, the system text. The exported Jinja takes its constants from here too, so both renderings
        fill a slot alike. TEXT and IMAGES are the turn's, not the template's."""
        if slot is Slot.SYSTEM:
            return self.system
        if slot is Slot.SYSTEM_HEADER:
            return self.role_format.format(role=self.system_role)
        if slot is Slot.ROLE:
            return self.roles[speaker]
        if slot is Slot.HEADER:
            return self.role_format.format(role=self.roles[speaker])
        if slot is Slot.SEP:
            return self.sep
        if slot is Slot.SEP2:
            return self.sep2 or ""
        raise ValueError(f"{slot.name} is a turn's text, not the template's")

    def dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[role, _message_text(message)] for role, message in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


def _message_text(message: Any) -> str | None:
    """LLaVA's web demo stores `(text, image, mode)` tuples; only the text is rendered."""
    if isinstance(message, tuple):
        return message[0]
    return message


def _render_layout(conv: Conversation, messages: list[tuple[str, str | None]]) -> list[Piece]:
    """Pieces of a style from its one definition (`mvlm.chat_format.LAYOUTS`): a piece per layout field
    written, the answer the only target. An open assistant turn is its header alone."""
    layout = LAYOUTS[conv.sep_style]

    def text(parts: Parts, speaker: int, message: str = "") -> str:
        def value(slot: Slot) -> str:
            if slot is Slot.TEXT:
                return message
            if slot is Slot.IMAGES:
                return DEFAULT_IMAGE_TOKEN * message.count(DEFAULT_IMAGE_TOKEN)
            return conv.template_text(slot, speaker)

        return write(parts, value)

    pieces = [Piece(text(layout.prologue, 0), False)]
    for index, (_role, message) in enumerate(messages):
        if index % 2 == 0:
            assert message is not None  # pieces() refuses an open user turn
            pieces.append(Piece(text(layout.user_parts(index), 0, message), False))
            continue
        pieces.append(Piece(text(layout.assistant_header, 1), False))
        if message is not None:
            pieces += [Piece(text(layout.answer, 1, message), True),
                       Piece(text(layout.after_answer, 1, message), False)]
    return pieces


def _render_chat_template(conv: Conversation, messages: list[tuple[str, str | None]]) -> list[Piece]:
    """Pieces from the tokenizer's own chat template.

    Rendering the conversation turn by turn, each longer rendering must start with the shorter one; the
    new text after an open assistant turn is the answer (a target). A template that rewrites earlier
    turns (so that no prefix holds) is refused rather than given wrong labels.
    """
    tokenizer = conv.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "template 'auto' uses the tokenizer's own chat_template, but this tokenizer has none; "
            "pick a named template with --version/--conv-mode (e.g. vicuna_v1, phi, chatml_direct)"
        )
    chat = [{"role": "system", "content": conv.system}] if conv.system else []
    rendered = ""
    pieces = []

    def render(turns: list[dict[str, str]], open_assistant: bool) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=open_assistant)

    for index, (_role, message) in enumerate(messages):
        if index % 2 == 0:
            chat.append({"role": "user", "content": message})
            text = render(chat, open_assistant=True)
            is_target = False
        elif message is None:
            continue
        else:
            chat.append({"role": "assistant", "content": message})
            text = render(chat, open_assistant=False)
            is_target = True
        if not text.startswith(rendered):
            raise ValueError(
                "the tokenizer's chat_template renders earlier turns differently once a turn is added, so "
                "labels cannot be built from it; pick a named template instead"
            )
        new_text = text[len(rendered) :]
        if is_target:
            # The answer and the end-of-turn marker right after it are targets; the header before it and
            # trailing newlines are not.
            answer_start = new_text.find(message)
            if answer_start < 0:
                raise ValueError("the tokenizer's chat_template altered an assistant answer; pick a named template")
            answer_end = answer_start + len(message)
            marker = new_text[answer_end:].rstrip("\n")
            target_end = answer_end + len(marker)
            pieces += [
                Piece(new_text[:answer_start], False),
                Piece(new_text[answer_start:target_end], True),
                Piece(new_text[target_end:], False),
            ]
        else:
            pieces.append(Piece(new_text, False))
        rendered = text
    return pieces


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_LLAMA_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

conv_vicuna_v1 = Conversation(
    system=VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>", version="v1"
)
conv_llava_v1 = Conversation(
    system=LLAVA_V1_SYSTEM, roles=("USER", "ASSISTANT"), sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>", version="v1"
)
conv_llava_plain = Conversation(system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="\n", version="plain")
conv_llava_llama_2 = Conversation(
    system=LLAVA_LLAMA_SYSTEM,
    roles=("USER", "ASSISTANT"),
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
    version="llama_v2",
)
conv_mistral_instruct = Conversation(
    system="", roles=("USER", "ASSISTANT"), sep_style=SeparatorStyle.LLAMA_2, sep="", sep2="</s>", version="llama_v2"
)
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)
conv_mpt = Conversation(
    system="<|im_start|>system\n"
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)
conv_phi = Conversation(
    system=VICUNA_SYSTEM,
    roles=("USER", "ASSISTANT"),
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="<|endoftext|>",
    version="phi",
)
conv_gemma = Conversation(
    system=VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), sep_style=SeparatorStyle.TWO, sep=" ", sep2="<eos>", version="gemma"
)
conv_phi3_chat = Conversation(
    system="",
    roles=("user", "assistant"),
    sep_style=SeparatorStyle.HEADER,
    role_format="<|{role}|>\n",
    sep="<|end|>",
    sep2="\n",
    version="phi3_chat",
)
conv_llama3 = Conversation(
    system=LLAVA_LLAMA_SYSTEM,
    roles=("user", "assistant"),
    sep_style=SeparatorStyle.HEADER,
    role_format="<|start_header_id|>{role}<|end_header_id|>\n\n",
    sep="<|eot_id|>",
    sep2="",
    version="llama3",
)
conv_auto = Conversation(system="", roles=("user", "assistant"), sep_style=SeparatorStyle.CHAT_TEMPLATE, version="auto")

conv_templates: dict[str, Conversation] = {
    "plain": conv_llava_plain,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "llava_llama_2": conv_llava_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mpt": conv_mpt,
    "phi": conv_phi,
    "gemma": conv_gemma,
    "phi3_chat": conv_phi3_chat,
    "llama3": conv_llama3,
    "auto": conv_auto,
}
default_conversation = conv_vicuna_v1


def get_conversation(name: str, tokenizer: Any = None) -> Conversation:
    """A fresh copy of the template `name`; `auto` needs the tokenizer whose chat template it uses."""
    if name not in conv_templates:
        raise ValueError(f"unknown chat template {name!r}; choose one of: {', '.join(sorted(conv_templates))}")
    conv = conv_templates[name].copy()
    if conv.sep_style is SeparatorStyle.CHAT_TEMPLATE:
        conv.tokenizer = tokenizer
    return conv
