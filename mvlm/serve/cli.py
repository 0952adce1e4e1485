"""`python -m mvlm.serve.cli`: chat with a checkpoint in the terminal, as LLaVA's `llava.serve.cli` does.

The image (a path or an http(s) URL) goes into the first turn only; later turns see it through the
conversation. Answers stream as they are generated. An empty line or end of input ends the chat.
The template is the one the checkpoint was trained with (stored in its config), unless --conv-mode says
otherwise; it is never guessed from the folder name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, NamedTuple, TextIO

from PIL import Image
from transformers import GenerationConfig

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.conversation import Conversation
from mvlm.data.images import ImageError, load_image
from mvlm.errors import MvlmError
from mvlm.inference import (
    StopStringStreamer,
    check_device,
    default_device,
    encode_prompt,
    generate_answers,
    generation_config,
    load_for_inference,
    new_conversation,
)
from mvlm.serve.images import DownloadError, download

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 30


class ChatError(MvlmError):
    """A problem the user can fix (bad path, URL, checkpoint or flag); shown as one line, no traceback."""


def fetch_image(source: str) -> Image.Image:
    """Open an image from a local path or an http(s) URL."""
    if source.startswith(("http://", "https://")):
        try:
            data = download(source, MAX_DOWNLOAD_BYTES, DOWNLOAD_TIMEOUT_S)
        except DownloadError as error:
            if error.too_large:
                raise ChatError(f"image URL {source} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB") from error
            raise ChatError(str(error)) from error
        try:
            return load_image(data)
        except ImageError as error:
            raise ChatError(f"image URL {source}: {error}") from error
    try:
        return load_image(source)
    except ImageError as error:
        raise ChatError(str(error)) from error


def display_role(role: str, fallback: str) -> str:
    """A role as the user should read it: ChatML's `<|im_start|>user\\n` shows as `user`."""
    shown = re.sub(r"<\|[^|>]*\|>|<[^<>\s]+>", "", role).strip()
    return shown or fallback


class ChatSession(NamedTuple):
    tokenizer: Any
    model: Any
    image_processor: Any
    conversation: Conversation
    config: GenerationConfig


def start_session(args: argparse.Namespace) -> ChatSession:
    """Load the checkpoint and pick its template and decoding settings."""
    loaded = load_for_inference(args.model_path, args.model_base, device=args.device, conv_mode=args.conv_mode,
                                load_8bit=args.load_8bit, load_4bit=args.load_4bit)
    conversation = new_conversation(loaded.conv_mode, loaded.tokenizer)
    config = generation_config(loaded.model, loaded.tokenizer, temperature=args.temperature,
                               max_new_tokens=args.max_new_tokens, stop_str=conversation.stop_str)
    return ChatSession(loaded.tokenizer, loaded.model, loaded.image_processor, conversation, config)


def chat(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """The read-answer loop (on sys.stdin/sys.stdout by default); returns at an empty line or end of input."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    image = fetch_image(args.image_file) if args.image_file else None  # a bad image fails before the model loads
    session = start_session(args)
    conversation = session.conversation
    user, assistant = display_role(conversation.roles[0], "USER"), display_role(conversation.roles[1], "ASSISTANT")
    pixel_values = None
    while True:
        stdout.write(f"{user}: ")
        stdout.flush()
        line = stdin.readline()
        text = line.rstrip("\n").replace(DEFAULT_IMAGE_TOKEN, "")  # images come from --image-file only
        if not text.strip():
            stdout.write("\n" if not line else "")  # at end of input, end the prompt's line
            stdout.write("exit...\n")
            stdout.flush()
            return
        if image is not None and pixel_values is None:
            text = f"{DEFAULT_IMAGE_TOKEN}\n{text}"  # the image goes into the first turn only
        conversation.append_message(conversation.roles[0], text)
        prompt = encode_prompt(conversation, [image] if image is not None else [], session.tokenizer,
                               session.image_processor, session.model, pixel_values=pixel_values)
        pixel_values = prompt.pixel_values
        stdout.write(f"{assistant}: ")
        stdout.flush()
        streamer = StopStringStreamer(session.tokenizer, conversation.stop_str, stdout)
        answer = generate_answers(session.model, session.tokenizer, [prompt], session.config, streamer=streamer)[0]
        conversation.append_message(conversation.roles[1], answer.text)
        if args.debug:
            asked = conversation.copy()
            asked.messages[-1][1] = None
            stdout.write(json.dumps({"prompt": asked.get_prompt(), "outputs": answer.text}) + "\n")
            stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm.serve.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True,
                        help="checkpoint folder (full; or stage-1/LoRA with --model-base)")
    parser.add_argument("--model-base", default=None,
                        help="the LLM a projector-only (stage-1) or LoRA checkpoint was trained on")
    parser.add_argument("--image-file", default=None, help="image path or http(s) URL; leave out for a text-only chat")
    parser.add_argument("--conv-mode", default=None,
                        help="chat template; default: the one stored in the checkpoint (conv_mode in config.json)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 decodes greedily (default 0.2, as LLaVA)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    quantize = parser.add_mutually_exclusive_group()
    quantize.add_argument("--load-8bit", action="store_true", help="8-bit language model (bitsandbytes)")
    quantize.add_argument("--load-4bit", action="store_true", help="4-bit NF4 language model (bitsandbytes)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: cuda if available, else cpu)")
    parser.add_argument("--debug", action="store_true",
                        help="after each answer, print the prompt and the answer as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.device = check_device(args.device or default_device())
        chat(args)
    except MvlmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
