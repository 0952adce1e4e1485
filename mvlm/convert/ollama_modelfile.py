"""An ollama Modelfile for the two GGUF files: FROM both, the chat template as ollama's Go template, the
template's system text, and its stop string.

The Go template is generated from the style's one definition (`mvlm.chat_format.LAYOUTS`), as the Jinja
chat template is (mvlm.convert.chat_template): turns from `.Messages`, the system text from `.System`
(the Modelfile's SYSTEM, which a system message replaces). ollama puts a message's images into its text
itself, so the template writes no image tag; where the image lands in the turn is ollama's choice, not
mvlm's `<image>` + newline. `auto` (the tokenizer's own Jinja) has no Go form: the Modelfile then has no
TEMPLATE, and ollama falls back to what it makes of the GGUF's template.
"""

from __future__ import annotations

import json

from typing import Any

from mvlm.chat_format import LAYOUTS, IfSystem, Layout, Parts, Slot
from mvlm.convert.chat_template import chat_template_for, leading_bos
from mvlm.conversation import Conversation, SeparatorStyle, get_conversation
from mvlm.errors import ExportError


def _literal(text: str) -> str:
    """Literal template text; `{{` would open an action, so it is written as an action printing it."""
    return text.replace("{{", '{{ "{{" }}')


def _go(conv: Conversation, parts: Parts, speaker: int) -> str:
    """`parts` as Go template text, inside a `range .Messages` (`.Content` is the turn's text)."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(_literal(part))
        elif isinstance(part, IfSystem):
            out.append("{{ if $.System }}" + _go(conv, part.parts, speaker) + "{{ end }}")
        elif part is Slot.SYSTEM:
            out.append("{{ $.System }}")
        elif part is Slot.TEXT:
            out.append("{{ .Content }}")
        elif part is Slot.IMAGES:
            continue  # ollama places images itself
        else:
            out.append(_literal(conv.template_text(part, speaker)))
    return "".join(out)


def writes_first_space(conv_mode: str, tokenizer: Any) -> bool:
    """Whether the prompt must open with a space: mvlm's Jinja writes one after the BOS where the tokenizer
    marks only a text's first word with "▁" (mvlm.convert.chat_template.leading_bos); llama.cpp, and so
    ollama, then reads the GGUF without a space prefix of its own (mvlm.convert.gguf_language_model)."""
    template = chat_template_for(conv_mode, None)
    return template is not None and '" "' in leading_bos(template, tokenizer)


def go_template(conv: Conversation, first_space: bool = False) -> str | None:
    """ollama's TEMPLATE rendering conversations as `conv` does (None for the tokenizer's own template);
    `first_space`: open the prompt with a space (writes_first_space)."""
    if conv.sep_style is SeparatorStyle.CHAT_TEMPLATE:
        return None
    layout: Layout = LAYOUTS[conv.sep_style]
    user = _go(conv, layout.user, 0)
    if layout.first_user is not None:
        user = "{{ if $first }}" + _go(conv, layout.first_user, 0) + "{{ else }}" + user + "{{ end }}"
    assistant = _go(conv, layout.assistant_header + layout.answer + layout.after_answer, 1)
    header = _go(conv, layout.assistant_header, 1)
    return (
        (" " if first_space else "") + _go(conv, layout.prologue, 0)
        + "{{ $first := true }}{{ range $i, $_ := $.Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + '{{ if eq .Role "user" }}' + user + "{{ $first = false }}"
        + ("{{ if $last }}" + header + "{{ end }}" if header else "")
        + '{{ else if eq .Role "assistant" }}' + assistant + "{{ end }}{{ end }}"
    )


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ExportError(f"the {what} contains three double quotes, which a Modelfile cannot quote")
    return f'"""{value}"""'


def modelfile_text(language_model_file: str, mmproj_file: str, conv_mode: str, tokenizer: Any,
                   context_length: int) -> str:
    """The Modelfile: FROM the language model, FROM the projector (ollama's form for a LLaVA mmproj),
    TEMPLATE, SYSTEM, the stop string, greedy decoding (mvlm's default) and the context length."""
    conv = get_conversation(conv_mode, tokenizer)
    lines = [f"FROM ./{language_model_file}", f"FROM ./{mmproj_file}"]
    template = go_template(conv, writes_first_space(conv_mode, tokenizer))
    if template is not None:
        lines.append(f"TEMPLATE {_quoted(template, 'chat template')}")
    if conv.system and conv.sep_style is not SeparatorStyle.CHAT_TEMPLATE:
        lines.append(f"SYSTEM {_quoted(conv.system, 'system text')}")
    if conv.stop_str:
        lines.append(f"PARAMETER stop {json.dumps(conv.stop_str)}")
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"
