"""mvlm's named chat templates as Jinja chat templates, for processors that other libraries load.

Each generated template renders a transformers-style conversation (`[{"role": "user", "content":
[{"type": "image"}, {"type": "text", "text": "..."}]}, ...]`, or plain string contents) into exactly the
string `Conversation.get_prompt()` gives for the same turns, images placed as mvlm places them (each
image's `<image>` followed by a newline at the start of its turn). A leading system message replaces
the template's system prompt, as it does in mvlm's data. `auto` is the tokenizer's own template.
"""

from __future__ import annotations

import json
from typing import Any

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.conversation import Conversation, SeparatorStyle, get_conversation

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


def _literal(value: str) -> str:
    """A Jinja string literal for `value` (Jinja unescapes backslash sequences as Python does)."""
    return json.dumps(value)


def chat_template_for(conv_mode: str, tokenizer: Any = None) -> str | None:
    """The Jinja chat template that renders like mvlm's template `conv_mode` (None for `auto` without one)."""
    conv: Conversation = get_conversation(conv_mode, tokenizer)
    if conv.sep_style is SeparatorStyle.CHAT_TEMPLATE:
        return getattr(tokenizer, "chat_template", None)
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
    return (settings + _PROLOGUE + _BODIES[conv.sep_style]).strip()
