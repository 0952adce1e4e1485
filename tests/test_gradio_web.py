"""The web UI, `python -m mvlm.serve.gradio_web_server`: its parts alone, then the real server driven by a
real headless Chromium (Debian's chromium + chromium-driver, through Selenium; scripts/test.sh installs
them when run as root).

The browser test starts the server as a user would, with a tiny chat checkpoint (--model-path, served in
the process through mvlm's OpenAI-compatible server) and a second backend that is down (--api-url to a
closed port); it uploads an image, asks, and reads the streamed answer from the page: it must be the
answer mvlm.inference gives to the same question and image (greedy).
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
from selenium.webdriver.common.by import By

from mvlm.errors import DataError, FlagError
from mvlm.inference import encode_prompt, generate_answers, generation_config, load_for_inference, new_conversation
from mvlm.serve import gradio_web_server
from mvlm.serve.web_backends import Backend, BackendError, list_models, stream_answer
from mvlm.serve.web_messages import openai_messages
from mvlm.serve.web_page import ERROR_TITLE, as_plain_markdown

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
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


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


# ---------------------------------------------------------------- the real server in a real browser


def reference_answers(model_dir: str, image_file: str | None, questions: list[str]) -> list[str]:
    """mvlm.inference's greedy answers to a conversation of `questions`, the image (if any) in the first turn."""
    loaded = load_for_inference(model_dir, device="cpu")
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
def web_server(model_dir, tmp_path_factory):
    """The web UI as a user starts it: the tiny checkpoint in-process, plus a backend that is down."""
    port, down = free_port(), f"http://127.0.0.1:{free_port()}/v1"
    folder = tmp_path_factory.mktemp("web")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(folder / "gradio"), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    log = open(folder / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mvlm.serve.gradio_web_server", "--model-path", model_dir, "--api-url", down,
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
        yield {"url": url, "down": down, "log": log}
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
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
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
            with contextlib.suppress(Exception):  # the page re-renders under our feet (stale elements)
                value = condition()
                if value:
                    return value
            time.sleep(0.1)
        body = self.driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"no {what} after {timeout} s; the page says:\n{body}")

    def bot_messages(self) -> list[str]:
        return [element.get_attribute("innerText").strip() for element in self.all("#chatbot [data-testid=bot]")]

    def ask(self, question: str, image: str | None = None) -> list[str]:
        """Send a question (with an image), wait until the answer has finished; the bot's messages then."""
        before = len(self.bot_messages())
        if image:
            self.find("#chat-input input[type=file]").send_keys(image)
            self.wait_for(lambda: self.all("#chat-input img[src*='file=']"), "thumbnail of the uploaded image")
        textarea = self.find("#chat-input textarea")
        textarea.send_keys(question)
        textarea.send_keys("\n")  # Enter sends
        self.wait_for(lambda: len(self.bot_messages()) > before, "answer")
        self.wait_for(lambda: self.find("#chat-input textarea").get_attribute("disabled") is None, "end of the answer")
        return self.bot_messages()[before:]


@needs_browser
def test_the_page_answers_as_mvlm_inference_does(web_server, browser, model_dir, image_file):
    questions = ["What color is the square?", "And where is it?"]
    expected = reference_answers(model_dir, image_file, questions)
    assert all(expected) and expected[0] != expected[1]
    assert reference_answers(model_dir, None, questions[:1]) != expected[:1]  # so the answer shows the image arrived
    page = Page(browser, web_server["url"])
    assert page.ask(questions[0], image=image_file) == [expected[0]]
    assert page.all("#chatbot [data-testid=user] img"), "the uploaded image is not shown in the chat"
    assert page.ask(questions[1]) == [expected[1]]  # the history (with the first turn's image) is replayed


@needs_browser
def test_the_model_menu_lists_both_backends_and_one_that_is_down_says_so(web_server, browser, model_dir):
    page = Page(browser, web_server["url"])
    page.find("#model-menu input").click()
    options = page.wait_for(lambda: page.all("#model-menu [role=option]") or page.all("[role=option]"), "menu")
    assert [option.get_attribute("aria-label") for option in options] == [model_dir, web_server["down"]]
    options[1].click()
    page.wait_for(lambda: page.find("#model-menu input").get_attribute("value") == web_server["down"], "choice")
    shown = [[line for line in message.splitlines() if line.strip()] for message in page.ask("Hello?")]
    assert shown == [[ERROR_TITLE, f"cannot reach {web_server['down']}: connection refused"]], shown
    assert "Traceback" not in page.find("body").text
