"""mvlm's named chat templates as Jinja chat templates, for processors that other libraries load.

Each generated template renders a transformers-style conversation (`[{"role": "user", "content":
[{"type": "image"}, {"type": "text", "text": "..."}]}, ...]`, or plain string contents) into exactly the
string `Conversation.get_prompt()` gives for the same turns, images placed as mvlm places them (each
image's `<image>` followed by a newline at the start of its turn). A leading system message replaces
the template's system prompt, as it does in mvlm's data. `auto` is the tokenizer's own template.

The Jinja is generated from the style's one definition (`mvlm.chat_format.LAYOUTS`), the same one
`Conversation.pieces()` renders from, and takes the template's own texts from
`Conversation.template_text`: nothing here spells out a style, so the two renderings cannot drift apart.

Where the tokenizer puts its BOS first when it encodes a text (Llama's, and mvlm's prompt ids then start
with it), the template writes `bos_token` first, as transformers' own chat templates do: servers (vLLM)
and `apply_chat_template(tokenize=True)` tokenize the rendered text with `add_special_tokens=False`, and
would otherwise lose the BOS. Tokenize a rendered template with `add_special_tokens=False`.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateError

from mvlm.chat_format import LAYOUTS, IfSystem, Layout, Parts, Slot
from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.conversation import Conversation, SeparatorStyle, get_conversation
from mvlm.data.tokenize import bos_prefix

_PROLOGUE = """
{%- macro turn_text(message) -%}
{%- if message['content'] is string -%}{{ message['content'] }}
{%- else -%}
{%- for item in message['content'] if item['type'] == 'image' -%}{{ IMAGE + '\\n' }}{%- endfor -%}
{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- macro image_count(message) -%}
{%- if message['content'] is string -%}{{ message['content'].count(IMAGE) }}
{%- else -%}{{ message['content'] | selectattr('type', 'equalto', 'image') | list | length }}
{%- endif -%}
{%- endmacro -%}
{%- set system = SYSTEM -%}
{%- set turns = messages -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = turn_text(messages[0]) -%}
{%- set turns = messages[1:] -%}
{%- endif -%}
"""

def _literal(value: str) -> str:
    """A Jinja string literal for `value` (Jinja unescapes backslash sequences as Python does)."""
    return json.dumps(value)


_TURN_VALUES = {
    Slot.SYSTEM: "system",  # the template's, or the leading system message's (set in _PROLOGUE)
    Slot.TEXT: "turn_text(message)",
    Slot.IMAGES: "(IMAGE * (image_count(message) | int))",
}
"""The Jinja expression of each slot the messages fill; the template's own texts are constants (below)."""


def _constant(slot: Slot, speaker: int) -> str:
    """The name of the Jinja constant that holds the template's text for `slot` in a turn of `speaker`."""
    if slot in (Slot.ROLE, Slot.HEADER):
        return ("USER", "ASSISTANT")[speaker] + ("_HEADER" if slot is Slot.HEADER else "")
    return slot.name


_CONSTANT_SLOTS = (Slot.SYSTEM_HEADER, Slot.ROLE, Slot.HEADER, Slot.SEP, Slot.SEP2)


def _expression(parts: Parts, speaker: int) -> str:
    """`parts` as one Jinja expression (in a turn of `speaker`; the prologue's slots belong to no speaker)."""
    terms = []
    for part in parts:
        if isinstance(part, str):
            terms.append(_literal(part))
        elif isinstance(part, IfSystem):
            terms.append(f"(({_expression(part.parts, speaker)}) if system else {_literal('')})")
        elif part in _TURN_VALUES:
            terms.append(_TURN_VALUES[part])
        else:
            terms.append(_constant(part, speaker))
    return " + ".join(terms)


def _write(parts: Parts, speaker: int) -> str:
    """The Jinja statement that writes `parts` ('' for none)."""
    return f"{{{{- {_expression(parts, speaker)} -}}}}" if parts else ""


def _body(layout: Layout) -> str:
    """The Jinja that writes a conversation as `layout` does; `turns` alternate user, assistant."""
    user = _write(layout.user, 0)
    if layout.first_user is not None:
        user = f"{{%- if loop.first -%}}{_write(layout.first_user, 0)}{{%- else -%}}{user}{{%- endif -%}}"
    assistant = _write(layout.assistant_header + layout.answer + layout.after_answer, 1)
    lines = [
        _write(layout.prologue, 0),
        "{%- for message in turns -%}",
        f"{{%- if loop.index0 % 2 == 0 -%}}{user}",
        f"{{%- else -%}}{assistant}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    if layout.assistant_header:
        generation_prompt = _write(layout.assistant_header, 1)
        lines.append(f"{{%- if add_generation_prompt -%}}{generation_prompt}{{%- endif -%}}")
    return "\n".join(line for line in lines if line)


_PROBE = [{"role": "user", "content": "Hi"}]
"""A one-turn conversation, rendered to see how a template's prompts start."""


def writes_bos(tokenizer: Any) -> bool:
    """Whether a template for `tokenizer` must write its BOS: encoding puts exactly that token first, so mvlm's
    prompt ids start with it, and a text tokenized with add_special_tokens=False would lack it."""
    if tokenizer is None or tokenizer.bos_token is None:
        return False
    return bos_prefix(tokenizer) == [tokenizer.bos_token_id]


def leading_bos(template: str, tokenizer: Any) -> str:
    """The Jinja that writes the BOS before `template` ('' where the tokenizer puts none first).

    The BOS is followed by a space where that is what makes the rendered prompt, tokenized with
    add_special_tokens=False, read as the tokenizer encodes the prompt with its BOS: a SentencePiece-style
    tokenizer that marks only a text's first word with "▁" (Metaspace prepend_scheme "first", transformers
    5's Llama) no longer sees that word as the first after a BOS, but reads a space as that "▁"; one that
    marks every segment (legacy) or none (Gemma), or a prompt that starts with a special token, needs no
    space. A one-turn prompt decides: a template's prompts start with its own system prompt or header
    whatever the turns say (a system message in its place starts with a word as well; only `plain` with
    a system message, which nobody chats with, starts otherwise)."""
    if not writes_bos(tokenizer):
        return ""
    try:
        probe = tokenizer.apply_chat_template(_PROBE, chat_template=template, tokenize=False,
                                              add_generation_prompt=True)
    except TemplateError:  # a template of the tokenizer's own that refuses the probe: no space is the convention
        return "{{ bos_token }}"
    expected = tokenizer.encode(probe)
    for space in ("", " "):
        if tokenizer.encode(tokenizer.bos_token + space + probe, add_special_tokens=False) == expected:
            return f"{{{{ bos_token + {_literal(space)} }}}}" if space else "{{ bos_token }}"
    return "{{ bos_token }}"


def chat_template_for(conv_mode: str, tokenizer: Any = None) -> str | None:
    """The Jinja chat template that renders like mvlm's template `conv_mode` (None for `auto` without one),
    led by `bos_token` where the tokenizer puts one first (without a tokenizer, no BOS is written)."""
    conv: Conversation = get_conversation(conv_mode, tokenizer)
    if conv.sep_style is SeparatorStyle.CHAT_TEMPLATE:
        own = getattr(tokenizer, "chat_template", None)
        if not own or "bos_token" in own:  # a template that writes the BOS itself (Llama-3's) is kept as it is
            return own
        return leading_bos(own, tokenizer) + own
    constants = {"IMAGE": DEFAULT_IMAGE_TOKEN, "SYSTEM": conv.template_text(Slot.SYSTEM, 0)}
    for slot in _CONSTANT_SLOTS:
        for speaker in (0, 1):
            constants[_constant(slot, speaker)] = conv.template_text(slot, speaker)
    settings = "".join(f"{{%- set {name} = {_literal(value)} -%}}\n" for name, value in constants.items())
    template = (settings + _PROLOGUE + _body(LAYOUTS[conv.sep_style])).strip()
    return leading_bos(template, tokenizer) + template
