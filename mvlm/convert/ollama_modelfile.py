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

from mvlm.chat_format import LAYOUTS, IfSystem, Layout, Parts, Slot
from mvlm.conversation import Conversation, SeparatorStyle
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


def go_template(conv: Conversation) -> str | None:
    """ollama's TEMPLATE rendering conversations as `conv` does (None for the tokenizer's own template)."""
    if conv.sep_style is SeparatorStyle.CHAT_TEMPLATE:
        return None
    layout: Layout = LAYOUTS[conv.sep_style]
    user = _go(conv, layout.user, 0)
    if layout.first_user is not None:
        user = "{{ if $first }}" + _go(conv, layout.first_user, 0) + "{{ else }}" + user + "{{ end }}"
    assistant = _go(conv, layout.assistant_header + layout.answer + layout.after_answer, 1)
    header = _go(conv, layout.assistant_header, 1)
    return (
        _go(conv, layout.prologue, 0)
        + "{{ $first := true }}{{ range $i, $_ := $.Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + '{{ if eq .Role "user" }}' + user + "{{ $first = false }}"
        + ("{{ if $last }}" + header + "{{ end }}" if header else "")
        + '{{ else if eq .Role "assistant" }}' + assistant + "{{ end }}{{ end }}"
    )


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ExportError(f"the {what} contains three double quotes, which a Modelfile cannot quote")
    return f'"""{value}"""'


def modelfile_text(language_model_file: str, mmproj_file: str, conv: Conversation, context_length: int) -> str:
    """The Modelfile: FROM the language model, FROM the projector (ollama's form for a LLaVA mmproj),
    TEMPLATE, SYSTEM, the stop string, greedy decoding (mvlm's default) and the context length."""
    lines = [f"FROM ./{language_model_file}", f"FROM ./{mmproj_file}"]
    template = go_template(conv)
    if template is not None:
        lines.append(f"TEMPLATE {_quoted(template, 'chat template')}")
    if conv.system and conv.sep_style is not SeparatorStyle.CHAT_TEMPLATE:
        lines.append(f"SYSTEM {_quoted(conv.system, 'system text')}")
    if conv.stop_str:
        lines.append(f"PARAMETER stop {json.dumps(conv.stop_str)}")
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"
