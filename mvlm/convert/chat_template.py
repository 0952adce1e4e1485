"""mvlm's named chat templates as Jinja chat templates, for processors that other libraries load.

Each generated template renders a transformers-style conversation (`[{"role": "user", "content":
[{"type": "image"}, {"type": "text", "text": "..."}]}, ...]`, or plain string contents) into exactly the
string `Conversation.get_prompt()` gives for the same turns, images placed as mvlm places them (each
image's `<image>` followed by a newline at the start of its turn). A leading system message replaces
the template's system prompt, as it does in mvlm's data. `auto` is the tokenizer's own template.

Where the tokenizer puts its BOS first when it encodes a text (Llama's, and mvlm's prompt ids then start
with it), the template writes `bos_token` first, as transformers' own chat templates do: servers (vLLM)
and `apply_chat_template(tokenize=True)` tokenize the rendered text with `add_special_tokens=False`, and
would otherwise lose the BOS. Tokenize a rendered template with `add_special_tokens=False`.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateError

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

_BODIES = {
    SeparatorStyle.TWO: """
{{- system + SEP -}}
{%- for message in turns -%}
{%- if loop.index0 % 2 == 0 -%}{{- USER + ': ' + turn_text(message) + SEP -}}
{%- else -%}{{- ASSISTANT + ': ' + turn_text(message) + SEP2 -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- ASSISTANT + ':' -}}{%- endif -%}
""",
    SeparatorStyle.MPT: """
{{- system + SEP -}}
{%- for message in turns -%}
{%- if loop.index0 % 2 == 0 -%}{{- USER + turn_text(message) + SEP -}}
{%- else -%}{{- ASSISTANT + turn_text(message) + SEP -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- ASSISTANT -}}{%- endif -%}
""",
    SeparatorStyle.PLAIN: """
{{- system -}}
{%- for message in turns -%}
{%- if loop.index0 % 2 == 0 -%}{{- IMAGE * (image_count(message) | int) -}}
{%- else -%}{{- turn_text(message) + SEP -}}
{%- endif -%}
{%- endfor -%}
""",
    SeparatorStyle.LLAMA_2: """
{%- for message in turns -%}
{%- if loop.index0 % 2 == 0 -%}
{%- set text = turn_text(message) -%}
{%- if loop.first and system -%}{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}{%- endif -%}
{{- ('' if loop.first else SEP) + '[INST] ' + text + ' [/INST]' -}}
{%- else -%}{{- ' ' + turn_text(message) + ' ' + SEP2 -}}
{%- endif -%}
{%- endfor -%}
""",
    SeparatorStyle.HEADER: """
{%- if system -%}{{- SYSTEM_HEADER + system + SEP + SEP2 -}}{%- endif -%}
{%- for message in turns -%}
{%- if loop.index0 % 2 == 0 -%}{{- USER_HEADER + turn_text(message) + SEP + SEP2 -}}
{%- else -%}{{- ASSISTANT_HEADER + turn_text(message) + SEP + SEP2 -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- ASSISTANT_HEADER -}}{%- endif -%}
""",
}


_PROBE = [{"role": "user", "content": "Hi"}]
"""A one-turn conversation, rendered to see how a template's prompts start."""


def _literal(value: str) -> str:
    """A Jinja string literal for `value` (Jinja unescapes backslash sequences as Python does)."""
    return json.dumps(value)


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
    constants = {
        "IMAGE": DEFAULT_IMAGE_TOKEN,
        "SYSTEM": conv.system,
        "SEP": conv.sep,
        "SEP2": conv.sep2 or "",
        "USER": conv.roles[0],
        "ASSISTANT": conv.roles[1],
        "SYSTEM_HEADER": conv.role_format.format(role=conv.system_role),
        "USER_HEADER": conv.role_format.format(role=conv.roles[0]),
        "ASSISTANT_HEADER": conv.role_format.format(role=conv.roles[1]),
    }
    settings = "".join(f"{{%- set {name} = {_literal(value)} -%}}\n" for name, value in constants.items())
    template = (settings + _PROLOGUE + _BODIES[conv.sep_style]).strip()
    return leading_bos(template, tokenizer) + template
