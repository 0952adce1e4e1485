"""`python -m mvlm.serve.api` as clients use it: the official `openai` client (and raw HTTP for what the client
cannot send) against a real server process on 127.0.0.1, serving the tiny chat checkpoint.

Expected answers come from `mvlm.inference.generate_answers`, one question at a time, on conversations built
here by hand from the v1 template; the chat CLI and the `model_vqa` runner are checked to give the same answer
to the same question and image. The load test runs concurrent clients (some streaming, some leaving
mid-stream) and checks every finished answer against its one-at-a-time answer.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from PIL import Image

from mvlm.conversation import get_conversation
from mvlm.eval import model_vqa
from mvlm.inference import encode_prompt, generate_answers, generation_config
from mvlm.serve import api, cli
from mvlm.serve.answer_text import AnswerText
from mvlm.serve.api import serve_in_background
from mvlm.serve.engine import Engine
from mvlm.serve.images import DownloadError, download
from tests.helpers.local_http import serving_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
MODEL = "chat-model"  # the fixture's folder name: the served name by default
MAX_IMAGE_BYTES = 50_000
MAX_IMAGE_PIXELS = 300_000
MAX_QUEUE = 8
COLORS = {"red": ((200, 30, 30), (40, 28)), "blue": ((30, 30, 200), (30, 50)), "green": ((30, 200, 30), (64, 64))}


def picture(name: str) -> Image.Image:
    color, size = COLORS[name]
    return Image.new("RGB", size, color)


def data_url(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return f"data:image/{kind.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def user(text: str, image: str | None = None, image_first: bool = True) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    parts = [{"type": "image_url", "image_url": {"url": data_url(picture(image))}}, {"type": "text", "text": text}]
    return {"role": "user", "content": parts if image_first else parts[::-1]}


def reference(loaded, turns, max_tokens, system=None) -> str:
    return reference_generated(loaded, turns, max_tokens, system).text


def reference_generated(loaded, turns, max_tokens, system=None):
    """generate_answers' greedy answer, alone, to `turns` = [(text, image name or None), answer, (text, image), ...]
    under the v1 template, each image at the start of the user turn that sent it (as the CLI puts it)."""
    tokenizer, model, image_processor = loaded
    conv = get_conversation("v1")
    if system is not None:
        conv.system = system
    images = []
    for index, turn in enumerate(turns):
        if index % 2:
            conv.append_message(conv.roles[1], turn)
            continue
        text, image = turn
        if image is not None:
            images.append(picture(image))
            text = f"<image>\n{text}"
        conv.append_message(conv.roles[0], text)
    prompt = encode_prompt(conv, images, tokenizer, image_processor, model)
    config = generation_config(model, tokenizer, max_new_tokens=max_tokens, stop_str=conv.stop_str)
    return generate_answers(model, tokenizer, [prompt], config)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log_path: str):
        self.process, self.url, self.log_path = process, url, log_path
        self.root = url[: -len("/v1")]

    def health(self) -> dict:
        return httpx.get(f"{self.root}/health", timeout=30).json()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def post(self, body, **kwargs) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(f"{self.url}/chat/completions", content=content,
                          headers={"Content-Type": "application/json"}, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("server") / "server.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mvlm.serve.api", "--model-path", model_dir, "--device", "cpu", "--port", str(port),
             "--max-new-tokens", "256", "--max-queue", str(MAX_QUEUE), "--max-image-bytes", str(MAX_IMAGE_BYTES),
             "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    running = Server(process, f"http://127.0.0.1:{port}/v1", log_path)
    deadline = time.time() + 180
    while True:
        assert process.poll() is None, running.log()
        assert time.time() < deadline, running.log()
        try:
            if running.health()["status"] == "ok":
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield running
    alive = process.poll() is None
    process.terminate()
    process.wait(timeout=60)
    assert alive, "the server died during the tests:\n" + running.log()
    assert "Traceback" not in running.log()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def ask(client, messages, max_tokens=8, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens,
                                          **kwargs)


# ---------------------------------------------------------------- answers


def test_models_and_health(server, client):
    assert [model.id for model in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = server.health()
    assert health["status"] == "ok" and health["model"] == MODEL and health["max_batch_size"] == 8


def test_greedy_answer_equals_the_cli_model_vqa_and_generate_answers(client, model_dir, loaded, tmp_path,
                                                                     monkeypatch, capsys):
    question = "What color is the square?"
    response = ask(client, [user(question, "red")])
    answer = response.choices[0].message.content
    assert answer == reference(loaded, [(question, "red")], 8) and answer

    image_file = tmp_path / "red.png"
    picture("red").save(image_file)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{question}\n"))
    assert cli.main(["--model-path", model_dir, "--image-file", str(image_file), "--temperature", "0",
                     "--max-new-tokens", "8", "--debug", "--device", "cpu"]) == 0
    debug = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"prompt"'))
    assert debug["outputs"] == answer

    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "image": "red.png", "text": question}) + "\n")
    assert model_vqa.main(["--model-path", model_dir, "--question-file", str(tmp_path / "q.jsonl"), "--image-folder",
                           str(tmp_path), "--answers-file", str(tmp_path / "a.jsonl"), "--max_new_tokens", "8",
                           "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "a.jsonl").read_text())["text"] == answer

    assert response.choices[0].finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.completion_tokens <= 8 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    text_only = ask(client, [user(question)])
    assert usage.prompt_tokens > text_only.usage.prompt_tokens  # the image's tokens are counted


def test_streamed_answer_is_the_plain_answer_in_pieces(client, loaded):
    messages = [user("Describe the picture in many words.", "blue", image_first=False)]  # parts in any order
    plain = ask(client, messages, max_tokens=12)
    chunks = list(ask(client, messages, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1
    assert "".join(pieces) == plain.choices[0].message.content == reference(
        loaded, [("Describe the picture in many words.", "blue")], 12)
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == plain.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(chunk.id == chunks[0].id and chunk.object == "chat.completion.chunk" for chunk in chunks)


def test_the_raw_event_stream_is_openais(server):
    response = server.post({"model": MODEL, "messages": [user("Hi")], "max_tokens": 4, "temperature": 0,
                            "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(event.startswith("data: {") for event in events[:-2])
    first, last = json.loads(events[0][6:]), json.loads(events[-3][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in last  # only with stream_options.include_usage


def test_multi_turn_with_system_message_and_the_image_where_it_was_sent(client, loaded):
    system = "You are a terse assistant that names colors."
    first = ask(client, [{"role": "system", "content": system}, user("Hello there.")]).choices[0].message.content
    assert first == reference(loaded, [("Hello there.", None)], 8, system=system)
    assert first != reference(loaded, [("Hello there.", None)], 8)  # the system message counts
    messages = [{"role": "system", "content": system}, user("Hello there."), {"role": "assistant", "content": first},
                user("What color is this square?", "green")]
    second = ask(client, messages).choices[0].message.content
    assert second == reference(loaded, [("Hello there.", None), first, ("What color is this square?", "green")], 8,
                               system=system)
    assert second != reference(loaded, [("Hello there.", "green"), first, ("What color is this square?", None)], 8,
                               system=system)


def test_stop_strings_max_tokens_and_seeded_sampling(client, loaded):
    question = [("Tell me about the square.", "red")]
    full = reference(loaded, question, 12)
    word = next(word for word in full.split()[1:] if len(word) > 1 and full.index(word) > 0)
    stopped = ask(client, [user(*question[0])], max_tokens=12, stop=[word, "never-appears"])
    assert stopped.choices[0].message.content == full[: full.index(word)].strip()
    assert stopped.choices[0].finish_reason == "stop"
    limited = client.chat.completions.create(model=MODEL, messages=[user(*question[0])], temperature=0,
                                             max_completion_tokens=3)
    assert limited.choices[0].finish_reason == "length" and limited.usage.completion_tokens == 3
    assert limited.choices[0].message.content == reference(loaded, question, 3)

    sampled = [client.chat.completions.create(model=MODEL, messages=[user("Say anything.")], temperature=1.2,
                                              top_p=0.9, seed=7, max_tokens=10).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] == sampled[1]  # a seed alone decides a sampled answer (a seeded request runs alone)


# ---------------------------------------------------------------- refusals


def assert_error(response: httpx.Response, status: int, code: str, *words: str, type="invalid_request_error"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type and error["code"] == code, error
    for word in words:
        assert word in error["message"], error
    return error


def noise_png(size: int) -> Image.Image:
    generator = random.Random(0)
    return Image.frombytes("RGB", (size, size), bytes(generator.getrandbits(8) for _ in range(size * size * 3)))


def test_bad_requests_get_openai_errors_naming_the_problem(server, client):
    ok = {"model": MODEL, "messages": [user("Hi")], "max_tokens": 2}

    def with_image(url):
        return {**ok, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]}]}

    assert_error(server.post(b'{"model": "chat-model", "messages": ['), 400, "invalid_json", "not valid JSON")
    assert_error(server.post({**ok, "model": "gpt-4o"}), 404, "model_not_found", "gpt-4o", MODEL)
    assert_error(server.post({**ok, "messages": []}), 400, "empty_messages", "messages")
    assert_error(server.post({"model": MODEL}), 400, "invalid_value", "messages", "missing")
    assert_error(server.post({**ok, "messages": [user("Hi"), {"role": "assistant", "content": "Hello"}]}), 400,
                 "invalid_message_order", "last message", "user")
    assert_error(server.post({**ok, "messages": [{"role": "system", "content": "Be brief."}]}), 400,
                 "invalid_message_order", "last message")
    assert_error(server.post({**ok, "messages": [{"role": "user", "content": 5}]}), 400, "invalid_value",
                 "messages[0].content")
    assert_error(server.post({**ok, "max_tokens": 257}), 400, "invalid_value", "max_tokens=257", "256")
    assert_error(server.post({**ok, "max_tokens": 0}), 400, "invalid_value", "max_tokens")
    assert_error(server.post({**ok, "temperature": 5}), 400, "invalid_value", "temperature")
    assert_error(server.post({**ok, "n": 2}), 400, "unsupported_parameter", "n=2")
    long_text = " ".join(f"word{number}" for number in range(600))
    assert_error(server.post({**ok, "messages": [user(long_text)]}), 400, "context_length_exceeded", "512")

    assert_error(server.post(with_image("data:text/plain;base64,aGVsbG8=")), 400, "invalid_image", "not an image",
                 "messages[0].content[1].image_url.url")
    assert_error(server.post(with_image("data:image/png;base64," + base64.b64encode(b"hello").decode())), 400,
                 "invalid_image", "not an image")
    assert_error(server.post(with_image("data:image/png,rawbytes")), 400, "invalid_image_url", "not base64")
    assert_error(server.post(with_image("data:image/png;base64,@@@@")), 400, "invalid_image_url", "base64")
    assert_error(server.post(with_image("file:///etc/passwd")), 400, "invalid_image_url", "data URL")
    assert_error(server.post(with_image("http://127.0.0.1:1/cat.png")), 400, "remote_images_disabled",
                 "--allow-remote-images")
    big = data_url(noise_png(160))  # random pixels do not compress: about 77 kB
    assert_error(server.post(with_image(big)), 400, "image_too_large", str(MAX_IMAGE_BYTES), "--max-image-bytes")
    wide = data_url(Image.new("RGB", (700, 700), (1, 2, 3)))  # a few kB, 490000 pixels
    assert_error(server.post(with_image(wide)), 400, "image_too_large", "490000", "--max-image-pixels")
    two = {**ok, "messages": [user("One", "red"), {"role": "assistant", "content": "Red."}, user("Two", "blue")]}
    assert_error(server.post(two), 400, "too_many_images", "2 images", "--max-images")
    assert_error(server.post({**ok, "messages": [user("x" * (5 * 2**20))]}), 413, "request_too_large", "limit")
    response = httpx.get(f"{server.root}/v2/nothing", timeout=30)
    assert response.status_code == 404 and "error" in response.json()

    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=[user("Hi")])
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model=MODEL, messages=[user("Hi"), {"role": "assistant", "content": "Yo"}])
    assert server.health()["status"] == "ok" and ask(client, [user("Still there?")], max_tokens=2).choices


def long_prompt(loaded) -> str:
    """A question whose greedy answer does not end within its first 8 tokens."""
    pad = loaded[0].pad_token_id
    return next(text for text in ("Tell me a long story.", "Describe everything.", "Go on and on.")
                if pad not in reference_generated(loaded, [(text, None)], 8).token_ids)


def first_text(stream) -> None:
    """Read a stream until its first piece of text (its row is then running)."""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return
    raise AssertionError("the stream ended without text")


def test_a_full_queue_answers_429_at_once(server, client, loaded):
    """While one long answer runs, 18 requests arrive at once against --max-queue 8: 8 wait, 10 are refused
    at once; the waiting ones are answered when the long one's client leaves."""
    before = server.health().get("refused_queue_full", 0)
    stream = ask(client, [user(long_prompt(loaded))], max_tokens=250, stream=True)
    first_text(stream)
    results: list[tuple[int, float, dict]] = []
    barrier = threading.Barrier(18)

    def one(index):
        barrier.wait()
        start = time.time()
        response = server.post({"model": MODEL, "messages": [user(f"Count to {index}.")], "max_tokens": 3,
                                "temperature": 0})
        results.append((response.status_code, time.time() - start, response.json()))

    threads = [threading.Thread(target=one, args=(index,)) for index in range(18)]
    [thread.start() for thread in threads]
    deadline = time.time() + 60
    while len(results) < 18 - MAX_QUEUE:  # the refused ones come back at once; the others wait for the long one
        assert time.time() < deadline, results
        time.sleep(0.01)
    stream.close()
    [thread.join() for thread in threads]
    refused = [(seconds, body) for status, seconds, body in results if status == 429]
    assert len(refused) == 18 - MAX_QUEUE and [status for status, _, _ in results].count(200) == MAX_QUEUE
    for seconds, body in refused:
        assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "queue_full"
        assert "--max-queue" in body["error"]["message"] and seconds < 5
    assert server.health()["refused_queue_full"] - before == len(refused)


def test_a_client_leaving_mid_stream_frees_its_row(server, client, loaded):
    before = server.health()
    stream = ask(client, [user(long_prompt(loaded))], max_tokens=250, stream=True)
    first_text(stream)
    stream.close()
    deadline = time.time() + 30
    while (health := server.health())["running"] or health.get("cancelled", 0) == before.get("cancelled", 0):
        assert time.time() < deadline, health
        time.sleep(0.05)
    assert health["cancelled"] == before.get("cancelled", 0) + 1
    assert health["completion_tokens"] - before.get("completion_tokens", 0) < 250  # stopped long before its limit


# ---------------------------------------------------------------- load


LOAD_PROMPTS = [("What color is the square?", "red"), ("Describe the picture.", "blue"), ("Say something nice.", None),
                ("Count to three.", None), ("Where is the square?", "green"), ("Is it blue? Answer yes or no.", "blue")]
LOAD_LENGTHS = (3, 10)


def run_load_round(client, expected, clients=8, per_client=4):
    """`clients` threads, each sending `per_client` requests in turn: plain, streamed, or left mid-stream."""
    answers, errors, left = [], [], []

    def worker(worker_index):
        for number in range(per_client):
            index = worker_index * per_client + number
            text, image = LOAD_PROMPTS[index % len(LOAD_PROMPTS)]
            length = LOAD_LENGTHS[(index // len(LOAD_PROMPTS)) % 2]
            mode = ("plain", "stream", "plain", "leave")[(worker_index + number) % 4]
            try:
                if mode == "plain":
                    answer = ask(client, [user(text, image)], max_tokens=length).choices[0].message.content
                    answers.append(((text, image, length), answer))
                elif mode == "stream":
                    pieces = [chunk.choices[0].delta.content or "" for chunk in
                              ask(client, [user(text, image)], max_tokens=length, stream=True) if chunk.choices]
                    answers.append(((text, image, length), "".join(pieces)))
                else:
                    stream = ask(client, [user(text, image)], max_tokens=200, stream=True)
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            break
                    stream.close()
                    left.append(index)
            except Exception as error:  # collected: a thread's assertion would not fail the test
                errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(clients)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert errors == []
    assert len(answers) + len(left) == clients * per_client
    for key, answer in answers:
        assert answer == expected[key], key
    return len(answers)


def test_concurrent_clients_get_their_own_one_at_a_time_answers(server, client, loaded):
    expected = {(text, image, length): reference(loaded, [(text, image)], length)
                for text, image in LOAD_PROMPTS for length in LOAD_LENGTHS}
    assert len(set(expected.values())) == len(expected)  # an answer given to the wrong request would show
    before = server.health()
    answered = run_load_round(client, expected)
    rss_after_first = server.rss_kib()
    answered += run_load_round(client, expected)
    rss_after_second = server.rss_kib()
    health = server.health()
    assert health["running"] == 0 and health["waiting"] == 0
    finished = health.get("completed", 0) - before.get("completed", 0)
    cancelled = health.get("cancelled", 0) - before.get("cancelled", 0)
    assert answered == 48 and finished >= answered and finished + cancelled == 64  # every request accounted for
    rows, batches = (health[key] - before.get(key, 0) for key in ("batched_rows", "batches"))
    assert rows / batches > 1.5  # requests were batched
    assert rss_after_second - rss_after_first < 48 * 1024, (rss_after_first, rss_after_second)  # KiB


# ---------------------------------------------------------------- in-process


def test_in_process_server_out_of_memory_remote_images_and_two_images(model_dir, loaded, tmp_path, monkeypatch):
    """The server in-process through serve_in_background (uvicorn in a thread, a free port). This CPU machine
    cannot run out of memory on purpose (the kernel would kill the process before torch raised), so the
    engine's generate raises torch.OutOfMemoryError, as CUDA's allocator does, for two batches."""
    original, failures = Engine.generate, [2]

    def generate(self, rows):
        if failures[0]:
            failures[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, rows)

    monkeypatch.setattr(Engine, "generate", generate)
    picture("green").save(tmp_path / "green.png")
    with serving_folder(tmp_path) as files:
        image_url = f"{files}/green.png"
        url, stop = serve_in_background(["--model-path", model_dir, "--device", "cpu", "--port", "0",
                                         "--max-images", "2", "--allow-remote-images", "--log-level", "error"])
        try:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
            for stream in (False, True):  # a stream's status waits for its first event, so it is a 503 too
                with pytest.raises(openai.InternalServerError) as caught:
                    response = ask(client, [user("Hi")], stream=stream)
                    list(response) if stream else None
                assert caught.value.status_code == 503
                assert caught.value.code == "out_of_memory" and caught.value.type == "server_error"
                assert "out of memory" in caught.value.message and "--max-batch-size" in caught.value.message
            assert ask(client, [user("Hi")]).choices[0].message.content == reference(loaded, [("Hi", None)], 8)

            # The model takes several images per conversation when the server allows them (--max-images 2).
            turns = [("What is first?", "red"), "Red.", ("And now?", "blue")]
            messages = [user("What is first?", "red"), {"role": "assistant", "content": "Red."},
                        user("And now?", "blue")]
            assert ask(client, messages).choices[0].message.content == reference(loaded, turns, 8)

            # http(s) image URLs are fetched with --allow-remote-images.
            remote = [{"role": "user", "content": [{"type": "text", "text": "What color?"},
                                                   {"type": "image_url", "image_url": {"url": image_url}}]}]
            assert ask(client, remote).choices[0].message.content == reference(loaded, [("What color?", "green")], 8)
            with pytest.raises(openai.BadRequestError, match="cannot fetch image URL"):
                missing = {"type": "image_url", "image_url": {"url": image_url + "x"}}
                ask(client, [{"role": "user", "content": [missing]}])
        finally:
            stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("/v1", "/health"), timeout=5)


def test_image_downloads_stop_one_byte_over_the_limit(tmp_path):
    """The chat CLI's and the server's one download: what fits comes whole, more is refused as too large, and a
    missing file is a DownloadError naming the URL."""
    (tmp_path / "ten.bin").write_bytes(bytes(range(10)))
    with serving_folder(tmp_path) as base:
        assert download(f"{base}/ten.bin", 10) == bytes(range(10))
        with pytest.raises(DownloadError, match="larger than 9 bytes") as too_big:
            download(f"{base}/ten.bin", 9)
        assert too_big.value.too_large
        with pytest.raises(DownloadError, match=f"cannot fetch image URL {base}/none.bin") as missing:
            download(f"{base}/none.bin", 10)
        assert not missing.value.too_large


# ---------------------------------------------------------------- streaming text


class ByteTokenizer:
    """Tokens are byte strings, decoded together (half a UTF-8 character shows as U+FFFD, as real ones do)."""

    def __init__(self, pieces: list[bytes], special: set[int] = frozenset()):
        self.pieces, self.special = pieces, special

    def decode(self, ids, skip_special_tokens=False):
        kept = [self.pieces[i] for i in ids if not (skip_special_tokens and i in self.special)]
        return b"".join(kept).decode("utf-8", errors="replace")


def streamed(pieces, stops, special=frozenset()):
    text = AnswerText(ByteTokenizer(pieces, set(special)), stops)
    shown = []
    for token_id in range(len(pieces)):
        shown.append(text.add(token_id))
        if text.stopped:
            break
    return shown, text.rest(), text.final()


def test_streamed_text_adds_up_to_the_final_answer_and_never_shows_a_stop():
    shown, rest, final = streamed([b" Hel", b"lo ", b" #", b"#", b"# tail"], ["###"])
    assert shown == ["Hel", "lo", "", "", ""] and rest == "" and final == "Hello"
    shown, rest, final = streamed([b"a #", b"#b", b" c "], ["###"])  # a false start is shown once settled
    assert "".join(shown) + rest == final == "a ##b c" and shown[1] == " ##b"
    shown, rest, final = streamed([b"x", b"</s>", b"never"], ["</s>"], special={1})
    assert final == "x" and "".join(shown) + rest == "x"
    shown, rest, final = streamed([b"caf", b"\xc3", b"\xa9!"], [])  # half a character waits for its other half
    assert shown == ["caf", "", "\u00e9!"] and final == "caf\u00e9!"
    shown, rest, final = streamed([b"a", b"b STOP", b"c"], ["</s>", "STOP"])
    assert final == "ab" and "".join(shown) + rest == "ab"


def test_a_checkpoint_that_cannot_load_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        api.main(["--model-path", str(tmp_path / "missing-ckpt"), "--device", "cpu"])
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("python -m mvlm.serve.api: error: ")
    assert "missing-ckpt" in err
    with pytest.raises(SystemExit) as caught:
        api.main(["--model-path", str(tmp_path), "--max-batch-size", "0"])
    assert caught.value.code == 1 and "--max-batch-size must be >= 1" in capsys.readouterr().err
