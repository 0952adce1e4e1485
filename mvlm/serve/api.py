"""`python -m mvlm.serve.api`: an OpenAI-compatible chat server for a checkpoint, batching concurrent requests.

    python -m mvlm.serve.api --model-path ./checkpoints/llava-v1.5-7b            # http://127.0.0.1:8000/v1

Any OpenAI client talks to it (`OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")`):
`POST /v1/chat/completions` with text and images (`data:image/...;base64,` URLs; http(s) URLs only with
--allow-remote-images), a system message, the conversation so far, `temperature` (0: greedy), `top_p`,
`max_tokens`, `stop`, `seed` and `stream`; `GET /v1/models`; `GET /health`. The prompt is the checkpoint's own
template, rendered as training renders it, so a greedy answer equals `python -m mvlm.serve.cli`'s and the
benchmark runners' for the same question and image.

Requests that arrive together are decoded together (`mvlm.serve.engine`). A bad request gets a 4xx in
OpenAI's error shape naming what is wrong; a full queue (--max-queue) a 429 at once; running out of memory
a 503 for the requests of that batch, after which the server goes on serving. Unless --host says otherwise
it listens on 127.0.0.1 only.

Other programs start it in-process with `serve_in_background(argv)` (a daemon thread; `--port 0` picks a
free port), which returns the base URL and a function that stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mvlm.errors import FlagError, user_errors_exit
from mvlm.inference import check_device, default_device, load_for_inference
from mvlm.serve.api_errors import INVALID_REQUEST, SERVER_ERROR, ApiError
from mvlm.serve.batch_rows import Event, Failed, Finished, Job, Sampling, TextDelta
from mvlm.serve.chat_prompt import PromptLimits, prepare_chat
from mvlm.serve.engine import Engine
from mvlm.serve.images import ImageLimits
from mvlm.serve.openai_responses import ChunkWriter, completion, completion_id, error_event, model_card, model_list
from mvlm.serve.openai_schema import parse_chat_request

PROG = "python -m mvlm.serve.api"
DISCONNECT_POLL_S = 0.5
"""How often a request still waiting for its first token checks whether its client has gone."""
BODY_ALLOWANCE = 4 * 2**20
"""Request bytes allowed besides the images' (text, JSON)."""
STARTUP_TIMEOUT_S = 600

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True,
                        help="checkpoint folder (full; or stage-1/LoRA with --model-base)")
    parser.add_argument("--model-base", default=None,
                        help="the LLM a projector-only (stage-1) or LoRA checkpoint was trained on")
    parser.add_argument("--conv-mode", default=None,
                        help="chat template; default: the one stored in the checkpoint (conv_mode in config.json)")
    parser.add_argument("--model-name", default=None,
                        help="the name clients ask for (`model`); default: the checkpoint folder's name")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--device", default=None, help="cpu, cuda or mps (default: cuda if available, else cpu)")
    placement.add_argument("--device-map", default=None, help="e.g. auto: spread the model over the GPUs (accelerate)")
    quantize = parser.add_mutually_exclusive_group()
    quantize.add_argument("--load-8bit", action="store_true", help="8-bit language model (bitsandbytes)")
    quantize.add_argument("--load-4bit", action="store_true", help="4-bit NF4 language model (bitsandbytes)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together at most (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=1024,
                        help="the largest max_tokens a request may ask for, and the default (default 1024)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="requests that may wait for a batch; more are refused with 429 (default 256)")
    parser.add_argument("--max-images", type=int, default=1,
                        help="images per conversation (default 1, as LLaVA-style checkpoints are trained)")
    parser.add_argument("--max-image-bytes", type=int, default=20 * 2**20,
                        help="largest encoded image accepted (default 20 MiB)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="largest width x height accepted (default 4096x4096)")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="fetch http(s) image URLs (off: the server would open connections for any client)")
    parser.add_argument("--batch-wait-ms", type=float, default=50.0,
                        help="how long a batch may wait for the requests expected to join it (those whose answers "
                        "ended with the previous batch) before it starts without them (default 50)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def check_flags(args: argparse.Namespace) -> None:
    for flag in ("max_batch_size", "max_new_tokens", "max_queue", "max_image_bytes", "max_image_pixels"):
        if getattr(args, flag) < 1:
            raise FlagError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_images < 0 or args.batch_wait_ms < 0:
        raise FlagError("--max-images and --batch-wait-ms must be >= 0")
    if not 0 <= args.port <= 65535:
        raise FlagError(f"--port must be in 0..65535, got {args.port}")


def served_name(args: argparse.Namespace) -> str:
    return args.model_name or os.path.basename(os.path.normpath(os.path.expanduser(args.model_path)))


def create_app(args: argparse.Namespace) -> FastAPI:
    """Load the checkpoint and build the app; the batching engine runs while the app does (its lifespan)."""
    check_flags(args)
    device = check_device(args.device or default_device())
    loaded = load_for_inference(args.model_path, args.model_base, device=device, conv_mode=args.conv_mode,
                                load_8bit=args.load_8bit, load_4bit=args.load_4bit, device_map=args.device_map)
    tokenizer_lock = threading.Lock()
    engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                    batch_wait_s=args.batch_wait_ms / 1000, tokenizer_lock=tokenizer_lock)
    limits = PromptLimits(args.max_images, args.max_new_tokens,
                          ImageLimits(args.max_image_bytes, args.max_image_pixels, args.allow_remote_images))
    name, created = served_name(args), int(time.time())
    max_body = args.max_images * (args.max_image_bytes * 4 // 3 + 1024) + BODY_ALLOWANCE

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)

    app = FastAPI(title="mvlm OpenAI-compatible server", lifespan=lifespan)
    app.state.engine = engine
    app.state.loaded = loaded
    app.state.model_name = name
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.alive():
            return JSONResponse({"status": "stopped", "model": name, **engine.stats()}, status_code=503)
        return JSONResponse({"status": "ok", "model": name, **engine.stats()})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return model_list(name, created)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise ApiError(404, f"the model {model_id!r} does not exist here; this server serves {name!r}",
                           code="model_not_found", param="model")
        return model_card(name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        chat = parse_chat_request(await read_body(request, max_body), name)
        prepared = await run_in_threadpool(prepare_chat, chat, loaded, limits, tokenizer_lock)
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = Job(prepared.prompt, prepared.max_tokens, prepared.stops, deliverer(asyncio.get_running_loop(), events),
                  Sampling(chat.temperature, chat.top_p, chat.seed), stream=chat.stream)
        engine.submit(job)
        handed_to_stream = False
        try:
            first = await first_event(events, job, request)
            if first is None:  # the client left before its answer began
                return Response(status_code=499)
            if isinstance(first, Failed):
                raise first.error
            answer_id = completion_id()
            if not chat.stream:
                event = first
                while not isinstance(event, (Finished, Failed)):
                    event = await events.get()
                if isinstance(event, Failed):
                    raise event.error
                return JSONResponse(completion(answer_id, name, event))
            writer = ChunkWriter(answer_id, name, chat.include_usage)
            handed_to_stream = True
            return CancellingStream(sse(first, events, job, writer), on_close=job.cancel,
                                    media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finally:
            if not handed_to_stream:
                job.cancel()  # answered, failed or abandoned: nothing more is wanted from its row

    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ours, Starlette's (unknown route, wrong method) and bugs (500)."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        body = ApiError(error.status_code, str(error.detail), type=INVALID_REQUEST).body()
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_request: Request, error: Exception) -> JSONResponse:
        logger.exception("error while handling a request")
        body = ApiError(500, f"internal error: {type(error).__name__}: {error}", type=SERVER_ERROR).body()
        return JSONResponse(body, status_code=500)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (it is never held whole)."""
    declared = request.headers.get("content-length", "")
    too_large = ApiError(413, f"the request body is larger than this server's limit of {limit} bytes (set by "
                         "--max-images and --max-image-bytes)", code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def deliverer(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[Event], None]:
    """Hands the engine thread's events to the request's coroutine."""

    def deliver(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody waits for this event
            pass

    return deliver


async def first_event(events: asyncio.Queue, job: Job, request: Request) -> Event | None:
    """The job's first event; None (and the job cancelled) if the client disconnects while it waits."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return None


async def sse(first: Event, events: asyncio.Queue, job: Job, writer: ChunkWriter) -> AsyncIterator[str]:
    """The stream of one answer; leaving it early (the client went away) cancels the job's row."""
    try:
        yield writer.role()
        event = first
        while True:
            if isinstance(event, TextDelta):
                yield writer.text(event.text)
            elif isinstance(event, Finished):
                yield writer.end(event)
                return
            else:
                yield error_event(event.error.body())
                return
            event = await events.get()
    finally:
        job.cancel()


class CancellingStream(StreamingResponse):
    """A StreamingResponse that calls `on_close` however the response ends, the client's disconnect included
    (Starlette may stop iterating the body without closing its generator)."""

    def __init__(self, content: Any, on_close: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def serve_in_background(argv: list[str]) -> tuple[str, Callable[[], None]]:
    """Start the server (uvicorn in a daemon thread, on 127.0.0.1 unless `--host` says otherwise; `--port 0`
    takes a free port) and return (its base URL `http://127.0.0.1:PORT/v1`, a function that stops it).

    Loading errors raise here (MvlmError), before the thread starts.
    """
    args = build_parser().parse_args(argv)
    app = create_app(args)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="mvlm-api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise FlagError(f"the server could not listen on {args.host}:{args.port} (is the port in use?)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    host = f"[{host}]" if ":" in host else host

    def stop() -> None:
        app.state.engine.stop()  # answers whatever runs or waits, so that uvicorn's graceful exit ends
        server.should_exit = True
        thread.join(timeout=30)

    return f"http://{host}:{port}/v1", stop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with user_errors_exit(PROG):
        app = create_app(args)
    print(f"serving {served_name(args)} at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
