"""The web UI, `python -m mvlm.serve.gradio_web_server`: its parts alone, then the real server driven by a
real headless Chromium (Debian's chromium + chromium-driver, through Selenium; scripts/test.sh installs
them when run as root).

The browser tests start the server as a user would, with three backends: a tiny chat checkpoint
(--model-path, served in the process by mvlm's OpenAI-compatible server), a slow fake server (--api-url,
one word every 0.2 s) and a server that is down (--api-url to a closed port). They upload an image, ask,
and read the answer from the page: it must be the one mvlm.inference gives to the same question and image
(greedy), in the first turn and the next; the menu lists the three backends, the one that is down says
"cannot reach ...: connection refused" in the chat, the retry button asks the model now chosen, and the
slow one's words appear while it answers and stop (the server sees the stream closed) at the stop button.
The "Side by side" tab asks two of them at once: each side streams on its own, keeps its own history, and
fails on its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from mvlm.errors import DataError, FlagError
from mvlm.inference import encode_prompt, generate_answers, generation_config, load_for_inference, new_conversation
from mvlm.serve import gradio_web_server
from mvlm.serve.web_backends import Backend, BackendError, list_models, stream_answer
from mvlm.serve.web_compare import ask_both, interleave, user_entry
from mvlm.serve.web_answers import ERROR_TITLE, as_plain_markdown
from mvlm.serve.web_messages import openai_messages
from tests.helpers.local_http import serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
needs_browser = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} missing: the browser tests need Debian's chromium and "
                          "chromium-driver (scripts/test.sh installs them with apt-get when run as root)")
MAX_TOKENS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (40, 28), (200, 30, 30)).save(path)
    return str(path)


def data_url(path: str, mime: str) -> str:
    with open(path, "rb") as handle:
        return f"data:{mime};base64,{base64.b64encode(handle.read()).decode()}"


# ---------------------------------------------------------------- Gradio history -> OpenAI messages


def test_gradio_history_becomes_openai_messages(image_file, tmp_path):
    history = [  # Gradio 6's messages format, as ChatInterface hands it to the chat function
        {"role": "user", "metadata": None, "options": None,
         "content": [{"type": "file", "file": {"path": image_file, "mime_type": "image/png"}, "alt_text": None},
                     {"type": "text", "text": "What color is it?"}]},
        {"role": "assistant", "metadata": None, "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "metadata": {"title": ERROR_TITLE},
         "content": [{"type": "text", "text": "cannot reach"}]},
    ]
    messages = openai_messages({"text": "Where is it?", "files": []}, history)
    assert messages == [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image_file, "image/png")}},
                                     {"type": "text", "text": "What color is it?"}]},
        {"role": "assistant", "content": "Red."},
        # the failed turn's question stays, its error box does not; two user turns in a row become one
        {"role": "user", "content": [{"type": "text", "text": "Sure?\nWhere is it?"}]},
    ]

    # an image goes into the turn it was sent in; JPEG is sent as it is, BMP re-encoded as PNG
    jpeg, bmp = str(tmp_path / "photo.jpg"), str(tmp_path / "scan.bmp")
    Image.new("RGB", (8, 8), (0, 90, 0)).save(jpeg)
    Image.new("RGB", (8, 8), (0, 0, 90)).save(bmp)
    messages = openai_messages({"text": "Compare.", "files": [jpeg, {"path": bmp}]}, [], system_prompt="Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    parts = messages[1]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": data_url(jpeg, "image/jpeg")}}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(parts[1]["image_url"]["url"].split(",")[1]))).size == (8, 8)
    assert parts[2] == {"type": "text", "text": "Compare."}

    # older shapes: a bare string, {"path"}, a (path,) tuple; an image-only turn has no text part
    legacy = [{"role": "user", "content": (image_file,)}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}]
    assert openai_messages({"text": "", "files": [image_file]}, legacy) == [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image_file, "image/png")}},
                                     {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image_file, "image/png")}}]},
    ]


def test_unusable_messages_are_refused_with_a_reason(tmp_path):
    with pytest.raises(DataError, match="the message is empty"):
        openai_messages({"text": "", "files": []}, [])
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(DataError, match="notes.png is not an image"):
        openai_messages({"text": "What is this?", "files": [str(notes)]}, [])
    with pytest.raises(DataError, match="cannot read the uploaded file gone.png"):
        openai_messages({"text": "And this?", "files": [str(tmp_path / "gone.png")]}, [])


def test_error_text_shows_as_written_in_the_chat():
    assert as_plain_markdown("a_b *c* <image> & [x](y)") == "a&#95;b &#42;c&#42; &#60;image&#62; &#38; &#91;x&#93;(y)"


# ---------------------------------------------------------------- side by side: two streams at once


def test_interleave_passes_each_item_on_as_it_comes_and_cancels_the_rest_when_closed():
    async def ticks(name: str, delays: list[float], log: list[str]):
        try:
            for index, delay in enumerate(delays):
                await asyncio.sleep(delay)
                yield f"{name}{index}"
            log.append(f"{name} done")
        except asyncio.CancelledError:
            log.append(f"{name} cancelled")
            raise

    async def scenario():
        log: list[str] = []
        fast, slow = ticks("a", [0.05, 0.05, 5.0], log), ticks("b", [0.3, 5.0], log)
        items = []
        merged = interleave([fast, slow])
        async for item in merged:
            items.append(item)
            if item == (1, "b0"):
                break  # the page's stop button: both are still running
        await merged.aclose()
        return items, log

    items, log = asyncio.run(scenario())
    assert items == [(0, "a0"), (0, "a1"), (1, "b0")]  # in the order they came, not one stream after the other
    assert sorted(log) == ["a cancelled", "b cancelled"]  # neither was left running

    async def failing():
        yield "x"
        raise RuntimeError("a bug in a stream")

    async def collect():
        return [item async for item in interleave([failing()])]

    with pytest.raises(RuntimeError, match="a bug in a stream"):
        asyncio.run(collect())


def test_the_side_by_side_question_shows_as_the_chat_shows_it(image_file):
    assert user_entry({"text": "Which?", "files": [image_file, {"path": "/tmp/b.png"}]}) == {
        "role": "user", "content": [{"path": image_file}, {"path": "/tmp/b.png"}, "Which?"]}
    assert user_entry({"text": "", "files": [image_file]}) == {"role": "user", "content": [{"path": image_file}]}


# ---------------------------------------------------------------- the OpenAI client side, against a fake server


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    """/v1/models lists `tiny`; chat completions stream the last user text back in two pieces, except for
    the models `bad` (HTTP 400 with an OpenAI error body) and `boom` (HTTP 500, plain text)."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode(),
                   "application/json")

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(request)
        if request["model"] == "bad":
            error = {"error": {"message": "at most one <image> per conversation", "type": "invalid_request_error"}}
            return self._send(400, json.dumps(error).encode(), "application/json")
        if request["model"] == "boom":
            return self._send(500, b"Internal Server Error: CUDA out of memory", "text/plain")
        text = request["messages"][-1]["content"][-1]["text"]
        chunks = [text[: len(text) // 2], text[len(text) // 2:]]
        events = "".join("data: " + json.dumps({"id": "1", "object": "chat.completion.chunk", "created": 0,
                                                 "model": "tiny", "choices": [{"index": 0, "delta": {"content": c},
                                                                               "finish_reason": None}]}) + "\n\n"
                         for c in chunks) + "data: [DONE]\n\n"
        self._send(200, events.encode(), "text/event-stream")


@pytest.fixture(scope="module")
def fake_server():
    with serving(FakeOpenAI) as base:
        yield f"{base}/v1"


class SlowOpenAI(http.server.BaseHTTPRequestHandler):
    """Serves the model `slow`, whose answer is `w0 w1 w2 ...`, one word every 0.2 s for 20 s, unless the
    client hangs up (the page's stop button), which it records."""

    hung_up = threading.Event()

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "slow", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        try:
            for index in range(100):
                chunk = {"id": "1", "object": "chat.completion.chunk", "created": 0, "model": "slow",
                         "choices": [{"index": 0, "delta": {"content": f"w{index} "}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            SlowOpenAI.hung_up.set()


@pytest.fixture(scope="module")
def slow_server():
    with serving(SlowOpenAI) as base:
        yield f"{base}/v1"


def answer(backend: Backend, text: str = "Hello there") -> list[str]:
    async def collect():
        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        return [piece async for piece in stream_answer(backend, messages, temperature=0.0, top_p=0.5, max_tokens=7)]
    return asyncio.run(collect())


def test_answers_stream_and_failures_say_what_failed(fake_server):
    assert list_models(fake_server) == ["tiny"]
    assert answer(Backend("fake", fake_server, model=None)) == ["Hello", " there"]  # model asked from /models
    assert {key: FakeOpenAI.requests[-1][key] for key in ("model", "stream", "temperature", "top_p", "max_tokens")} \
        == {"model": "tiny", "stream": True, "temperature": 0.0, "top_p": 0.5, "max_tokens": 7}

    with pytest.raises(BackendError) as error:
        answer(Backend("fake", fake_server, model="bad"))
    assert str(error.value) == f"{fake_server} answered HTTP 400: at most one <image> per conversation"
    with pytest.raises(BackendError) as error:
        answer(Backend("fake", fake_server, model="boom"))
    assert str(error.value) == f"{fake_server} answered HTTP 500: Internal Server Error: CUDA out of memory"

    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError) as error:
        answer(Backend("down", down, model="tiny"))
    assert str(error.value) == f"cannot reach {down}: connection refused"
    with pytest.raises(BackendError) as error:
        answer(Backend("down", down, model=None))  # while asking for its model name
    assert str(error.value) == f"cannot reach {down}: connection refused"
    with pytest.raises(BackendError, match=f"cannot reach {down}: connection refused"):
        list_models(down)


def test_side_by_side_sends_one_question_to_two_backends_and_keeps_their_histories_apart(fake_server, image_file):
    """ask_both against the fake server: `tiny` echoes the question back, `bad` refuses it with HTTP 400."""
    backends = [Backend("tiny", fake_server, model="tiny"), Backend("bad", fake_server, model="bad")]

    def run(message, histories, labels=("tiny", "bad")):
        async def collect():
            return [both async for both in ask_both(backends, message, histories, labels, system_prompt=None,
                                                    temperature=0.0, top_p=0.5, max_tokens=7)]
        return asyncio.run(collect())

    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    updates = run({"text": "Which color?", "files": [image_file]}, (earlier, []))
    asked = {"role": "user", "content": [{"path": image_file}, "Which color?"]}
    assert updates[0] == (earlier + [asked], [asked])  # the question shows on both sides before any answer
    left, right = updates[-1]
    assert left == earlier + [asked, {"role": "assistant", "content": "Which color?"}]  # the echo, whole
    assert right[:-1] == [asked] and right[-1].metadata == {"title": ERROR_TITLE}
    assert right[-1].content == as_plain_markdown(
        f"{fake_server} answered HTTP 400: at most one <image> per conversation")
    # each side was asked its own conversation: the left one with its earlier turn, the right one without
    asked_left, asked_right = sorted(FakeOpenAI.requests[-2:], key=lambda request: request["model"] != "tiny")
    assert [message["role"] for message in asked_left["messages"]] == ["user", "assistant", "user"]
    assert [message["role"] for message in asked_right["messages"]] == ["user"]

    # a message with nothing in it is answered on both sides, and nothing is sent
    sent_before = len(FakeOpenAI.requests)
    [(left, right)] = run({"text": "", "files": []}, ([], earlier))
    assert left[-1].content == right[-1].content == as_plain_markdown(
        "cannot send this message: the message is empty: type a question or attach an image")
    assert right[:-1] == earlier and len(FakeOpenAI.requests) == sent_before


# ---------------------------------------------------------------- command line


def test_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gradio_web_server.main([])
    assert exit_info.value.code == 2 and "give at least one --model-path or --api-url" in capsys.readouterr().err

    parser = gradio_web_server.build_parser()
    args = parser.parse_args(["--model-path", "lora-a", "--model-path", "full-b", "--model-base", "base",
                              "--model-base", "", "--device-map", "auto", "--load-4bit"])
    assert gradio_web_server.server_argv(args, 0, "lora-a") == [
        "--model-path", "lora-a", "--port", "0", "--model-name", "lora-a", "--log-level", "warning",
        "--model-base", "base", "--device-map", "auto", "--load-4bit"]
    assert gradio_web_server.server_argv(args, 1, "full-b") == [
        "--model-path", "full-b", "--port", "0", "--model-name", "full-b", "--log-level", "warning",
        "--device-map", "auto", "--load-4bit"]
    args = parser.parse_args(["--model-path", "a", "--model-path", "b", "--conv-mode", "v1", "--device", "cpu"])
    assert gradio_web_server.server_argv(args, 1, "b")[-4:] == ["--conv-mode", "v1", "--device", "cpu"]
    args = parser.parse_args(["--model-path", "a", "--model-path", "b", "--model-path", "c",
                              "--model-base", "x", "--model-base", "y"])
    with pytest.raises(FlagError, match="--model-base is given 2 times for 3 --model-path"):
        gradio_web_server.server_argv(args, 0, "a")
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-path", "a", "--device", "cpu", "--device-map", "auto"])


def test_start_up_failures_are_one_line(tmp_path, capsys):
    assert gradio_web_server.main(["--model-path", str(tmp_path / "missing-ckpt"), "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: cannot load the checkpoint {tmp_path / 'missing-ckpt'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert gradio_web_server.main(["--api-url", f"http://127.0.0.1:{free_port()}/v1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: cannot listen on 127.0.0.1:{port} (is the port in use? pick " \
                                           "another with --port)"


# ---------------------------------------------------------------- the real server in a real browser


@pytest.fixture(scope="module")
def reference_answers(model_dir):
    """(image_file or None, questions) -> mvlm.inference's greedy answers, the image in the first turn."""
    loaded = load_for_inference(model_dir, device="cpu")
    return lambda image_file, questions: answers_of(loaded, image_file, questions)


def answers_of(loaded, image_file: str | None, questions: list[str]) -> list[str]:
    """Answer one question at a time, each answer appended to the conversation (as the page replays it)."""
    conversation = new_conversation(loaded.conv_mode, loaded.tokenizer)
    images = [Image.open(image_file).convert("RGB")] if image_file else []
    answers = []
    for index, question in enumerate(questions):
        conversation.append_message(conversation.roles[0],
                                    f"<image>\n{question}" if index == 0 and images else question)
        prompt = encode_prompt(conversation, images, loaded.tokenizer, loaded.image_processor, loaded.model)
        config = generation_config(loaded.model, loaded.tokenizer, temperature=0.0, max_new_tokens=MAX_TOKENS,
                                   stop_str=conversation.stop_str)
        answers.append(generate_answers(loaded.model, loaded.tokenizer, [prompt], config)[0].text)
        conversation.append_message(conversation.roles[1], answers[-1])
    return answers


@pytest.fixture(scope="module")
def web_server(model_dir, slow_server, tmp_path_factory):
    """The web UI as a user starts it: the tiny checkpoint in-process, a slow server and a server that is down."""
    port, down = free_port(), f"http://127.0.0.1:{free_port()}/v1"
    folder = tmp_path_factory.mktemp("web")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(folder / "gradio"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    log = open(folder / "server.log", "w+")  # read back when the server does not come up
    process = subprocess.Popen(
        [sys.executable, "-m", "mvlm.serve.gradio_web_server", "--model-path", model_dir, "--api-url", slow_server,
         "--api-url", down,
         "--port", str(port), "--device", "cpu", "--temperature", "0", "--max-tokens", str(MAX_TOKENS)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"the web server did not come up (exit status {process.poll()}):\n{log.read()[-4000:]}")
            time.sleep(0.5)
        yield {"url": url, "down": down}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, Debian's binary and driver given by path (so Selenium Manager downloads nothing)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # and should it still be asked, it stays offline
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Page:
    """The chat page as a user sees it."""

    def __init__(self, driver, url: str):
        self.driver = driver
        driver.get(url)
        self.wait_for(lambda: self.find("#chat-input textarea"), "the chat input")

    def find(self, css: str):
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def all(self, css: str):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(self, condition, what: str, timeout: float = 120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            # the page re-renders under our feet: elements go stale or are not there yet
            with contextlib.suppress(WebDriverException, AttributeError, IndexError, ValueError):
                value = condition()
                if value:
                    return value
            time.sleep(0.1)
        body = self.driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"no {what} after {timeout} s; the page says:\n{body}")

    def bot_messages(self, chat: str = "#chatbot") -> list[str]:
        return [element.get_attribute("innerText").strip() for element in self.all(f"{chat} [data-testid=bot]")]

    def answering(self, box: str = "#chat-input") -> bool:
        return self.find(f"{box} textarea").get_attribute("disabled") is not None  # the input waits meanwhile

    def open_tab(self, name: str) -> None:
        tabs = self.wait_for(lambda: self.all("button[role=tab]"), "tabs")
        [tab] = [tab for tab in tabs if tab.text.strip() == name]
        tab.click()
        self.wait_for(lambda: tab.get_attribute("aria-selected") == "true", f"the tab {name} open")

    def choose_model(self, label: str, menu: str = "#model-menu") -> list[str]:
        """Pick a model in a menu; returns the menu's choices."""
        self.find(f"{menu} input").click()

        def listed():  # read in one go: a list still there from another menu goes stale meanwhile
            options = self.all("[role=option]")
            return options and (options, [option.get_attribute("aria-label") for option in options])

        options, labels = self.wait_for(listed, "menu")
        options[labels.index(label)].click()
        self.wait_for(lambda: self.find(f"{menu} input").get_attribute("value") == label, f"{label} chosen")
        self.wait_for(lambda: not self.all("[role=option]"), "the menu closed")
        return labels

    def send(self, question: str, image: str | None = None, box: str = "#chat-input", chat: str = "#chatbot") -> int:
        """Type a question (after attaching an image) and press Enter; the number of bot messages before."""
        before = len(self.bot_messages(chat))
        if image:
            self.find(f"{box} input[type=file]").send_keys(image)
            self.wait_for(lambda: self.all(f"{box} img[src*='file=']"), "thumbnail of the uploaded image")
        textarea = self.find(f"{box} textarea")
        textarea.send_keys(question)
        textarea.send_keys("\n")  # Enter sends
        self.wait_for(lambda: len(self.bot_messages(chat)) > before, "answer")
        return before

    def ask(self, question: str, image: str | None = None) -> list[str]:
        """Send a question and wait until its answer has finished; the bot's new messages."""
        before = self.send(question, image)
        self.wait_for(lambda: not self.answering(), "end of the answer")
        return self.bot_messages()[before:]


@needs_browser
def test_the_page_answers_as_mvlm_inference_does(web_server, browser, reference_answers, image_file):
    questions = ["What color is the square?", "And where is it?"]
    expected = reference_answers(image_file, questions)
    assert all(expected) and expected[0] != expected[1]
    assert reference_answers(None, questions[:1]) != expected[:1]  # so the answer shows the image arrived
    page = Page(browser, web_server["url"])
    assert page.ask(questions[0], image=image_file) == [expected[0]]
    assert page.all("#chatbot [data-testid=user] img"), "the uploaded image is not shown in the chat"
    assert page.ask(questions[1]) == [expected[1]]  # the history (with the first turn's image) is replayed


@needs_browser
def test_the_model_menu_lists_every_backend_and_one_that_is_down_says_so(web_server, browser, model_dir,
                                                                          slow_server, reference_answers):
    page = Page(browser, web_server["url"])
    labels = page.choose_model(web_server["down"])
    assert labels == [model_dir, f"slow @ {slow_server}", web_server["down"]]  # the down one: its URL alone
    shown = [[line for line in message.splitlines() if line.strip()] for message in page.ask("Hello?")]
    assert shown == [[ERROR_TITLE, f"cannot reach {web_server['down']}: connection refused"]], shown
    assert "Traceback" not in page.find("body").text

    # the same question to another model: choose it, press the retry button under the last answer
    expected = reference_answers(None, ["Hello?"])[0]
    page.choose_model(model_dir)
    page.all("#chatbot button[aria-label=Retry]")[-1].click()
    page.wait_for(lambda: page.bot_messages() == [expected], f"the answer {expected!r} in place of the error")


@needs_browser
def test_answers_stream_into_the_page_and_the_stop_button_ends_them(web_server, browser, slow_server):
    page = Page(browser, web_server["url"])
    page.choose_model(f"slow @ {slow_server}")
    SlowOpenAI.hung_up.clear()
    page.send("Count.")
    partial = page.wait_for(lambda: "w3" in page.bot_messages()[-1] and page.bot_messages()[-1], "streamed words")
    assert page.answering() and partial.startswith("w0 w1 w2 w3")  # shown while the server still answers
    page.find("#chat-input button.stop-button").click()
    page.wait_for(lambda: not page.answering(), "the input back after stop")
    assert SlowOpenAI.hung_up.wait(10), "the server was not told to stop (the HTTP stream stayed open)"
    stopped = page.bot_messages()[-1]
    time.sleep(1)
    assert page.bot_messages()[-1] == stopped and "w99" not in stopped  # the stopped answer stays as it was



@needs_browser
def test_side_by_side_asks_two_models_at_once(web_server, browser, model_dir, slow_server, reference_answers,
                                              image_file):
    questions = ["What color is the square?", "And where is it?"]
    expected = reference_answers(image_file, questions)
    slow, down = f"slow @ {slow_server}", web_server["down"]
    page = Page(browser, web_server["url"])
    page.open_tab("Side by side")
    assert page.choose_model(model_dir, menu="#left-model") == [model_dir, slow, down]
    page.choose_model(slow, menu="#right-model")
    SlowOpenAI.hung_up.clear()

    # one question to both: A's whole answer shows while B still streams its words; stop ends B
    page.send(questions[0], image=image_file, box="#compare-input", chat="#left-chat")
    page.wait_for(lambda: page.bot_messages("#left-chat") == [expected[0]], f"A's answer {expected[0]!r}")
    page.wait_for(lambda: "w3" in page.bot_messages("#right-chat")[-1], "B's streamed words")
    assert page.answering("#compare-input")
    page.find("#compare-input button.stop-button").click()
    page.wait_for(lambda: not page.answering("#compare-input"), "the input back after stop")
    assert SlowOpenAI.hung_up.wait(10), "B's server was not told to stop (the HTTP stream stayed open)"
    for side in ("#left-chat", "#right-chat"):
        assert page.all(f"{side} [data-testid=user] img"), f"the uploaded image is not shown in {side}"

    # the next question: A answers from its own history (the image replayed), B's backend is down and says so
    page.choose_model(down, menu="#right-model")
    page.send(questions[1], box="#compare-input", chat="#left-chat")
    page.wait_for(lambda: not page.answering("#compare-input"), "the end of both answers")
    assert page.bot_messages("#left-chat") == expected
    failure = [line for line in page.bot_messages("#right-chat")[-1].splitlines() if line.strip()]
    assert failure == [ERROR_TITLE, f"cannot reach {down}: connection refused"], failure

    page.find("#compare-clear").click()
    page.wait_for(lambda: not page.bot_messages("#left-chat") and not page.bot_messages("#right-chat"),
                  "both chats cleared")
