"""Greedy answers from llama.cpp through llama-cpp-python's multimodal chat API, for tests/test_to_gguf.py.

Run by the side environment's Python (scripts/llama_cpp_env.sh), never imported by the test suite:

    $MVLM_LLAMA_CPP_PYTHON tests/helpers/llama_cpp_answers.py REQUEST.json ANSWERS.json

REQUEST: {"model": LM.gguf, "mmproj": MMPROJ.gguf, "chat_template": mvlm's Jinja, "stop": [..],
"max_tokens": N, "n_ctx": N, "questions": [{"image": PNG path, "text": question}], "embeddings": bool}.
ANSWERS: {"answers": [text], "prompt_tokens": [[id, ...]], "embeddings": [[[float]]] (with "embeddings")}.

A `Llava15ChatHandler` with the mmproj file renders the chat with its CHAT_FORMAT; here that is mvlm's own
template, so both sides prompt alike. The handler finds images as `image_url` parts and swaps their URL,
wherever the template wrote it, for mtmd's media marker; mvlm's template writes a string turn as it is,
so each user turn is handed to it as the string the handler expects: the image URL, a newline, the
question (mvlm's `<image>` + newline at the start of a turn). No default system message is added, and
the template's BOS is left to llama.cpp's tokenizer (mtmd adds it where the vocabulary says to; the handler
would hand the template the BOS as bytes). One thread: tiny models gain nothing from more, and on a busy
two-core machine threads waiting for each other make a run many times slower.
"""

from __future__ import annotations

import base64
import ctypes
import json
import sys

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
from llama_cpp.llama_chat_format import Llava15ChatHandler

TURNS_AS_STRINGS = """
{%- set bos_token = '' -%}
{%- set ns = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- if message.content is string -%}
{%- set ns.messages = ns.messages + [{'role': message.role, 'content': message.content}] -%}
{%- else -%}
{%- set turn = namespace(text='') -%}
{%- for part in message.content if part.type == 'image_url' -%}
{%- set turn.text = turn.text + (part.image_url if part.image_url is string else part.image_url.url) + '\\n' -%}
{%- endfor -%}
{%- for part in message.content if part.type == 'text' -%}{%- set turn.text = turn.text + part.text -%}{%- endfor -%}
{%- set ns.messages = ns.messages + [{'role': message.role, 'content': turn.text}] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = ns.messages -%}
"""


def data_uri(path: str) -> str:
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


def chat_handler(mmproj: str, chat_template: str) -> Llava15ChatHandler:
    handler_class = type("MvlmTemplateHandler", (Llava15ChatHandler,),
                         {"CHAT_FORMAT": TURNS_AS_STRINGS + chat_template, "DEFAULT_SYSTEM_MESSAGE": None})
    return handler_class(clip_model_path=mmproj, verbose=False)


def image_embeddings(handler: Llava15ChatHandler, llama: llama_cpp.Llama, image: str) -> list[list[float]]:
    """What the mmproj makes of one image: the embedding rows mtmd hands the language model."""
    handler._init_mtmd_context(llama)
    bitmap = handler._create_bitmap_from_bytes(open(image, "rb").read())
    text = mtmd.mtmd_input_text()
    marker = mtmd.mtmd_default_marker()
    text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd.mtmd_tokenize(handler.mtmd_ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            assert mtmd.mtmd_encode_chunk(handler.mtmd_ctx, chunk) == 0
            rows = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            width = llama_cpp.llama_model_n_embd(llama.model)
            values = mtmd.mtmd_get_output_embd(handler.mtmd_ctx)
            return [[values[row * width + column] for column in range(width)] for row in range(rows)]
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
    raise AssertionError("mtmd made no image chunk")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        request = json.load(handle)
    handler = chat_handler(request["mmproj"], request["chat_template"])
    llama = llama_cpp.Llama(model_path=request["model"], chat_handler=handler, n_ctx=request.get("n_ctx", 512),
                            n_threads=1, n_batch=512, seed=0, verbose=False)
    result: dict = {"answers": [], "prompt_tokens": []}
    for question in request["questions"]:
        content = [{"type": "image_url", "image_url": {"url": data_uri(question["image"])}},
                   {"type": "text", "text": question["text"]}]
        messages = [{"role": "user", "content": content}]
        reply = llama.create_chat_completion(messages=messages, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                             repeat_penalty=1.0, max_tokens=request["max_tokens"],
                                             stop=request["stop"], seed=0)
        result["answers"].append(reply["choices"][0]["message"]["content"])
        result["prompt_tokens"].append([int(token) for token in llama.input_ids[: reply["usage"]["prompt_tokens"]]])
    if request.get("embeddings"):
        result["embeddings"] = [image_embeddings(handler, llama, question["image"])
                                for question in request["questions"][:2]]
    with open(sys.argv[2], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
