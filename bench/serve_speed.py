"""Serving speed of `python -m mvlm.serve.api`: batched against one request at a time, on the same server code.

Two servers run the same tiny model (built here, random weights, nothing downloaded): one as it ships
(`--max-batch-size 8`), and the baseline `--max-batch-size 1`, which answers one request at a time. Closed-loop
clients (each sends its next request when its answer is back) ask both the same LLaVA-shaped questions (two
thirds with an image, as data URLs), greedy, with a fixed `max_tokens`. At 1, 4 and 8 concurrent clients it
reports requests/s and generated tokens/s of each server, the mean batch the batched server formed, and the
ratio of their tokens/s. Greedy answers must not depend on batching: the two servers' answers to each
question are compared.

    python bench/serve_speed.py            # about 4 minutes on 2 CPU cores
    python bench/serve_speed.py --quick    # a short run (the test suite's)

Each level runs on both servers in turn (the baseline first, then the batched, then again with --repeats), so
that other load on a shared machine hits both alike; the best run of each is reported, with the share of
its time the server spent generating (the rest: HTTP, image decoding, clients coming back). Results are
printed as a table and written as JSON (--json).

Each server computes on one CPU thread by default (--threads): the clients, the servers' HTTP and anything
else on the machine need the other cores, and a second math thread that waits for a core makes every small
matrix product stall (on a busy 2-core machine, 2 threads ran 3 to 15 times slower, and erratically). With
a model this small, a CPU run is an unfavourable case for batching: the prompt (64 image tokens and the
template's system text) costs as much per request batched or not, and is a larger share of the work than
on a GPU, where decoding dominates; longer answers (--max-tokens) therefore gain more.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llava_shaped_data import WORDS, corpus  # noqa: E402

from mvlm.demo.models import train_tokenizer  # noqa: E402
from mvlm.model.builder import build_model, save_checkpoint  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "bench-model"
SERVERS = {"one-at-a-time": 1, "batched": 8}  # name: --max-batch-size
STARTUP_TIMEOUT_S = 300


def build_checkpoint(folder: str) -> str:
    """A tiny LLaVA (Llama 4 x 256 + CLIP 112 px / 14 px patches: 64 image tokens) with the vicuna_v1 template.
    Weights are drawn wide (std 0.3) so that answers differ from question to question."""
    tokenizer = train_tokenizer("sentencepiece", True, corpus(), 1000)
    torch.manual_seed(0)
    llm, tower = os.path.join(folder, "llm"), os.path.join(folder, "tower")
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3)).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=112, patch_size=14)).save_pretrained(tower)
    model, tokenizer, image_processor = build_model(llm, tower)
    model.config.conv_mode = "vicuna_v1"
    model.config.image_aspect_ratio = "pad"
    checkpoint = os.path.join(folder, MODEL_NAME)
    save_checkpoint(checkpoint, model, tokenizer, image_processor)
    return checkpoint


def questions(count: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """`count` chat messages lists: a question of 4-30 words, two thirds of them with an image."""
    rng = random.Random(seed)
    asked = []
    for _ in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))).capitalize() + "?"
        if rng.random() < 2 / 3:
            image = Image.new("RGB", (rng.randint(60, 240), rng.randint(60, 240)),
                              tuple(rng.randrange(256) for _ in range(3)))
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            content: Any = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
        else:
            content = text
        asked.append([{"role": "user", "content": content}])
    return asked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `python -m mvlm.serve.api` process."""

    def __init__(self, checkpoint: str, max_batch_size: int, max_tokens: int, threads: int, log_folder: str,
                 extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(log_folder, f"server-{max_batch_size}.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mvlm.serve.api", "--model-path", checkpoint, "--device", "cpu",
                 "--port", str(self.port), "--max-batch-size", str(max_batch_size), "--max-new-tokens",
                 str(max_tokens), "--log-level", "warning", *(extra or [])],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env=dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1"))

    def wait_ready(self) -> None:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None or time.time() > deadline:
                with open(self.log_path) as log:
                    raise RuntimeError(f"the server did not start:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=30).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def ask(http: httpx.Client, url: str, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    response = http.post(f"{url}/v1/chat/completions", timeout=600, json={
        "model": MODEL_NAME, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    response.raise_for_status()
    return response.json()


def run_level(server: Server, asked: list[list[dict[str, Any]]], clients: int, per_client: int,
              max_tokens: int) -> dict[str, Any]:
    """`clients` closed-loop clients, `per_client` requests each; client c asks questions c*per_client, ..."""
    answers: dict[int, str] = {}
    tokens = [0] * clients
    errors: list[str] = []
    before = server.stats()
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        with httpx.Client() as http:
            barrier.wait()
            for number in range(per_client):
                question = (index * per_client + number) % len(asked)
                try:
                    body = ask(http, server.url, asked[question], max_tokens)
                except httpx.HTTPError as error:
                    errors.append(repr(error))
                    return
                answers[question] = body["choices"][0]["message"]["content"]
                tokens[index] += body["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    after = server.stats()
    batches = after.get("batches", 0) - before.get("batches", 0)
    rows = after.get("batched_rows", 0) - before.get("batched_rows", 0)
    busy = after.get("generate_seconds", 0.0) - before.get("generate_seconds", 0.0)
    return {"seconds": seconds, "requests": clients * per_client, "tokens": sum(tokens),
            "requests_per_s": clients * per_client / seconds, "tokens_per_s": sum(tokens) / seconds,
            "mean_batch_size": rows / batches if batches else None, "generating_share": busy / seconds,
            "answers": answers}


def warm_up(server: Server, asked: list[list[dict[str, Any]]], max_tokens: int) -> None:
    """First calls of each batch shape are slow (allocations, kernels): not part of the measurement."""
    run_level(server, asked, 1, 1, max_tokens)
    run_level(server, asked, 8, 1, max_tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run: 16 tokens, 3 requests per client, no repeat")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default 128; --quick 16)")
    parser.add_argument("--requests-per-client", type=int, default=None,
                        help="default 10; --quick 3 (fewer clients send more, so that each level asks at least "
                        "4x this many questions)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per level and server, best kept (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each server (OMP_NUM_THREADS; default 1: see the module's docstring)")
    parser.add_argument("--batch-wait-ms", default=None, help="passed to the batched server (default: its own)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    max_tokens = args.max_tokens or (16 if args.quick else 128)
    per_client = args.requests_per_client or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 2)
    per_level = {clients: max(per_client, -(-4 * per_client // clients)) for clients in args.clients}
    asked = questions(max(clients * count for clients, count in per_level.items()))

    with tempfile.TemporaryDirectory(prefix="serve-speed-") as folder:
        checkpoint = build_checkpoint(folder)
        extra = ["--batch-wait-ms", args.batch_wait_ms] if args.batch_wait_ms is not None else []
        servers = {name: Server(checkpoint, size, max_tokens, args.threads, folder, extra if size > 1 else [])
                   for name, size in SERVERS.items()}
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():
                warm_up(server, asked, max_tokens)
            results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in servers}
            for clients in args.clients:
                for _ in range(repeats):
                    for name, server in servers.items():
                        run = run_level(server, asked, clients, per_level[clients], max_tokens)
                        best = results[name].get(clients)
                        if best is None or run["tokens_per_s"] > best["tokens_per_s"]:
                            results[name][clients] = run
        finally:
            for server in servers.values():
                server.stop()

    report = summarize(results, args.clients, max_tokens, per_client, repeats, args.threads)
    print_table(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


def summarize(results: dict[str, dict[int, dict[str, Any]]], levels: list[int], max_tokens: int, per_client: int,
              repeats: int, threads: int) -> dict[str, Any]:
    baseline, batched = results["one-at-a-time"], results["batched"]
    rows = []
    same = total = 0
    for clients in levels:
        one, many = baseline[clients], batched[clients]
        shared = set(one["answers"]) & set(many["answers"])
        same += sum(one["answers"][key] == many["answers"][key] for key in shared)
        total += len(shared)
        rows.append({"clients": clients,
                     **{f"{name}_{field}": run[field] for name, run in (("one_at_a_time", one), ("batched", many))
                        for field in ("requests_per_s", "tokens_per_s", "mean_batch_size", "generating_share",
                                      "requests", "tokens")},
                     "tokens_per_s_ratio": many["tokens_per_s"] / one["tokens_per_s"]})
    return {"max_tokens": max_tokens, "requests_per_client": per_client, "repeats": repeats, "threads": threads,
            "device": "cpu", "rows": rows, "answers_compared": total, "answers_identical": same,
            "ratio_at_max_clients": rows[-1]["tokens_per_s_ratio"], "max_clients": levels[-1]}


def print_table(report: dict[str, Any]) -> None:
    print(f"\nmvlm.serve.api on the CPU ({report['threads']} thread(s) per server), greedy, max_tokens "
          f"{report['max_tokens']}, best of {report['repeats']}")
    columns = [("clients", 7, "{:d}"), ("requests", 8, "{:d}"), ("one-at-a-time req/s", 19, "{:.2f}"),
               ("tok/s", 7, "{:.1f}"), ("batched req/s", 13, "{:.2f}"), ("tok/s", 7, "{:.1f}"),
               ("mean batch", 10, "{:.2f}"), ("generating", 10, "{:.0%}"), ("tok/s ratio", 11, "{:.2f}x")]
    header = "  ".join(f"{name:>{width}}" for name, width, _ in columns)
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        values = [row["clients"], row["batched_requests"], row["one_at_a_time_requests_per_s"],
                  row["one_at_a_time_tokens_per_s"], row["batched_requests_per_s"], row["batched_tokens_per_s"],
                  row["batched_mean_batch_size"] or 0.0, row["batched_generating_share"], row["tokens_per_s_ratio"]]
        print("  ".join(f"{form.format(value):>{width}}" for (_, width, form), value in zip(columns, values)))
    print(f"\nat {report['max_clients']} clients: batched gives {report['ratio_at_max_clients']:.2f}x the tokens/s of "
          "one request at a time")
    print(f"greedy answers identical on both servers: {report['answers_identical']}/{report['answers_compared']}")
    print("(generating: the share of the batched server's time spent in generate)")


if __name__ == "__main__":
    sys.exit(main())
