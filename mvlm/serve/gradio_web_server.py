"""`python -m mvlm.serve.gradio_web_server`: a browser chat with images, in one process.

    python -m mvlm.serve.gradio_web_server --model-path CKPT [--model-base BASE] [--port 7860]
    python -m mvlm.serve.gradio_web_server --api-url http://127.0.0.1:8000/v1

The page speaks only the OpenAI chat-completions protocol (streamed), to one or more backends:
each --model-path is served in this process by mvlm's own OpenAI-compatible server (mvlm.serve.api;
a LoRA folder with --model-base is served unmerged, --device-map auto spreads a big model over the
GPUs), and each --api-url is any OpenAI-compatible server that is already running (mvlm's, vLLM, ...).
With several backends the page offers a model menu and a "Side by side" tab that asks two at once.
Errors say what failed (the server's own message, or "cannot reach http://...: connection refused"),
never a generic one.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from mvlm.errors import FlagError, MvlmError
from mvlm.serve.api import serve_in_background
from mvlm.serve.web_backends import Backend, BackendError, list_models
from mvlm.serve.web_page import Settings, build_page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm.serve.gradio_web_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    backends = parser.add_argument_group("backends (at least one; each flag may be repeated)")
    backends.add_argument("--model-path", action="append", default=[],
                          help="checkpoint folder to serve in this process (full; or stage-1/LoRA with --model-base)")
    backends.add_argument("--model-base", action="append", default=[],
                          help="the LLM a stage-1 or LoRA checkpoint was trained on: once for every --model-path, "
                               "or once per --model-path in the same order ('' for none)")
    backends.add_argument("--conv-mode", action="append", default=[],
                          help="chat template (default: the one stored in the checkpoint); once for all or once "
                               "per --model-path")
    backends.add_argument("--api-url", action="append", default=[],
                          help="base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    backends.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY") or "EMPTY",
                          help="key sent to the --api-url servers (default: $OPENAI_API_KEY, else EMPTY)")
    backends.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for an answer (default 600)")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--device", default=None, help="cpu, cuda or mps for --model-path (default: cuda if "
                                                          "available, else cpu)")
    placement.add_argument("--device-map", default=None, help="'auto' spreads a --model-path over all GPUs")
    quantize = parser.add_mutually_exclusive_group()
    quantize.add_argument("--load-8bit", action="store_true", help="8-bit language model (bitsandbytes)")
    quantize.add_argument("--load-4bit", action="store_true", help="4-bit NF4 language model (bitsandbytes)")
    page = parser.add_argument_group("the page")
    page.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    page.add_argument("--port", type=int, default=7860)
    page.add_argument("--temperature", type=float, default=0.2, help="starting value of the slider (0: greedy)")
    page.add_argument("--top-p", type=float, default=0.7, help="starting value of the slider")
    page.add_argument("--max-tokens", type=int, default=512, help="starting value of the slider")
    page.add_argument("--system-prompt", default=None,
                      help="sent as a system message first (default: none; the template's own system text applies)")
    page.add_argument("--concurrency", type=int, default=8, help="questions answered at once (default 8)")
    return parser


def _per_model(values: list[str], count: int, flag: str) -> list[str | None]:
    """A flag given once (for every --model-path) or once per --model-path; '' means none."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return [values[0] or None] * count
    if len(values) != count:
        raise FlagError(f"{flag} is given {len(values)} times for {count} --model-path; give it once for all "
                        "or once per --model-path")
    return [value or None for value in values]


def server_argv(args: argparse.Namespace, index: int, name: str) -> list[str]:
    """mvlm.serve.api's flags for the index-th --model-path."""
    argv = ["--model-path", args.model_path[index], "--port", "0", "--model-name", name, "--log-level", "warning"]
    base = _per_model(args.model_base, len(args.model_path), "--model-base")[index]
    conv_mode = _per_model(args.conv_mode, len(args.model_path), "--conv-mode")[index]
    argv += ["--model-base", base] if base else []
    argv += ["--conv-mode", conv_mode] if conv_mode else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--device-map", args.device_map] if args.device_map else []
    argv += ["--load-8bit"] if args.load_8bit else []
    argv += ["--load-4bit"] if args.load_4bit else []
    return argv


def _unique(label: str, taken: set[str]) -> str:
    unique, number = label, 2
    while unique in taken:
        unique, number = f"{label} ({number})", number + 1
    taken.add(unique)
    return unique


def start_backends(args: argparse.Namespace, stops: list[Callable[[], None]]) -> list[Backend]:
    """The page's backends: a server in this process per --model-path, then every model of every --api-url.
    Each started server's stop function is appended to `stops` as soon as it runs."""
    backends: list[Backend] = []
    labels: set[str] = set()
    names: set[str] = set()
    for index, path in enumerate(args.model_path):
        name = _unique(os.path.basename(os.path.normpath(path)) or "model", names)
        print(f"[mvlm] loading {path} ...", file=sys.stderr, flush=True)
        base_url, stop = serve_in_background(server_argv(args, index, name))
        stops.append(stop)
        backends.append(Backend(label=_unique(path, labels), base_url=base_url.rstrip("/"), model=name,
                                timeout_s=args.timeout))
    for url in args.api_url:
        url = url.rstrip("/")
        try:
            models = list_models(url, args.api_key)
        except BackendError as error:
            print(f"[mvlm] warning: {error}; the page will ask it again at each question", file=sys.stderr,
                  flush=True)
            models = [None]
        for model in models or [None]:
            label = _unique(f"{model} @ {url}" if model else url, labels)
            backends.append(Backend(label=label, base_url=url, model=model, api_key=args.api_key,
                                    timeout_s=args.timeout))
    return backends


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model_path and not args.api_url:
        parser.error("give at least one --model-path or --api-url")
    stops: list[Callable[[], None]] = []
    try:
        backends = start_backends(args, stops)
        page = build_page(backends, Settings(temperature=args.temperature, top_p=args.top_p,
                                             max_tokens=args.max_tokens, system_prompt=args.system_prompt,
                                             concurrency=args.concurrency))
        try:
            page.queue().launch(server_name=args.host, server_port=args.port, show_error=True, ssr_mode=False)
        except OSError as error:  # Gradio's own words name launch()'s arguments, not our flags
            raise FlagError(f"cannot listen on {args.host}:{args.port} (is the port in use? pick another with "
                            "--port)") from error
    except MvlmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for stop in reversed(stops):
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
