"""`python -m mvlm.serve.cli` driven as a user drives it: through a pipe, in a terminal (pty), with bad input.

Expected answers come from the model's own `generate` on prompts written out by hand from the template.
"""

import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from mvlm.conversation import get_conversation
from mvlm.data.images import process_images
from mvlm.data.tokenize import tokenize_prompt
from mvlm.serve import cli
from mvlm.inference import StopStringStreamer
from tests.helpers.chat_model import save_chat_checkpoint
from tests.helpers.local_http import serving_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "red.png"
    Image.new("RGB", (40, 28), (200, 30, 30)).save(path)
    return str(path)


def reference_answer(loaded, turns, image_file, max_new_tokens):
    """Greedy answer to the conversation `turns` (user, assistant, ..., user) under the v1 template."""
    tokenizer, model, image_processor = loaded
    conv = get_conversation("v1")
    for index, text in enumerate(turns):
        conv.append_message(conv.roles[index % 2], text)
    pixel_values = process_images([Image.open(image_file)], image_processor, "pad") if image_file else None
    output = model.generate(tokenize_prompt(conv, tokenizer, model.num_image_tokens)[None], pixel_values=pixel_values,
                            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0], skip_special_tokens=True).split("</s>")[0].strip()


def run_cli(args, stdin_text, timeout=300):
    return subprocess.run([sys.executable, "-m", "mvlm.serve.cli", "--device", "cpu", *args], input=stdin_text,
                          capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


def test_multi_turn_chat_through_a_pipe(model_dir, loaded, image_file):
    first, second = "What color is the square?", "And where is it?"
    result = run_cli(["--model-path", model_dir, "--image-file", image_file, "--temperature", "0",
                      "--max-new-tokens", "8", "--debug"], f"{first}\n{second}\n")  # then end of input
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    answer1 = reference_answer(loaded, [f"<image>\n{first}"], image_file, 8)
    answer2 = reference_answer(loaded, [f"<image>\n{first}", answer1, second], image_file, 8)
    assert answer1 and answer2 and answer1 != answer2
    prompt1 = f"{SYSTEM} USER: <image>\n{first} ASSISTANT:"
    prompt2 = f"{prompt1} {answer1}</s>USER: {second} ASSISTANT:"  # the image stays in the first turn only
    debug1 = json.dumps({"prompt": prompt1, "outputs": answer1})
    debug2 = json.dumps({"prompt": prompt2, "outputs": answer2})
    pattern = (r"USER: ASSISTANT: (?P<stream1>.*)\n" + re.escape(debug1) + r"\n"
               r"USER: ASSISTANT: (?P<stream2>.*)\n" + re.escape(debug2) + r"\nUSER: \nexit...\n")
    match = re.fullmatch(pattern, result.stdout, flags=re.DOTALL)
    assert match, result.stdout
    assert match["stream1"].strip() == answer1 and match["stream2"].strip() == answer2  # streamed = answered


def read_until(fd, marker, buffer, timeout=240):
    """Read the terminal until `marker` has appeared after what `buffer` already holds."""
    start = len(buffer)
    deadline = time.time() + timeout
    while marker not in buffer[start:].decode(errors="replace"):
        assert time.time() < deadline, f"no {marker!r} in {buffer.decode(errors='replace')!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            buffer += chunk
    return buffer


def test_text_only_chat_in_a_terminal_with_conv_mode_override(model_dir, loaded):
    """In a pty the prompt appears before the user types; Ctrl-D ends the chat with exit code 0."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "mvlm.serve.cli", "--device", "cpu", "--model-path", model_dir,
         "--conv-mode", "chatml_direct", "--temperature", "0", "--max-new-tokens", "6"],
        stdin=terminal, stdout=terminal, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV, close_fds=True)
    os.close(terminal)
    try:
        screen = read_until(controller, "user: ", b"")  # ChatML's `<|im_start|>user\n` role, shown as `user`
        os.write(controller, b"Say yes.\n")
        screen = read_until(controller, "user: ", screen)
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        screen = read_until(controller, "exit...", screen)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    text = screen.decode(errors="replace").replace("\r\n", "\n")
    tokenizer, model, _ = loaded
    conv = get_conversation("chatml_direct")
    conv.append_message(conv.roles[0], "Say yes.")
    output = model.generate(tokenize_prompt(conv, tokenizer, model.num_image_tokens)[None], max_new_tokens=6,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0], skip_special_tokens=True).split("<|im_end|>")[0].strip()
    assert f"user: Say yes.\nassistant: {expected}" in text.replace("assistant:  ", "assistant: ")


def test_image_from_a_url(model_dir, loaded, image_file, tmp_path, monkeypatch, capsys):
    with serving_folder(os.path.dirname(image_file)) as base:
        url = f"{base}/{os.path.basename(image_file)}"
        monkeypatch.setattr(sys, "stdin", io.StringIO("What color is the square?\n\n"))
        code = cli.main(["--model-path", model_dir, "--image-file", url, "--temperature", "0", "--max-new-tokens", "5",
                         "--debug", "--device", "cpu"])
        assert code == 0
        debug = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith('{"prompt"')))
        assert debug["outputs"] == reference_answer(loaded, ["<image>\nWhat color is the square?"], image_file, 5)

        monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
        assert cli.main(["--model-path", model_dir, "--image-file", url + ".missing"]) == 1
        assert "cannot fetch image URL" in capsys.readouterr().err


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line_error(capsys):
    """The error line: the last on stderr, the only one saying `error:` (model-loading progress may precede it)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    return lines[-1]


def test_bad_input_is_one_line_on_stderr(model_dir, image_file, checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    base = ["--model-path", model_dir, "--device", "cpu"]
    assert cli.main([*base, "--image-file", str(tmp_path / "nope.png")]) == 1
    assert "nope.png does not exist" in one_line_error(capsys)

    assert cli.main([*base, "--image-file", f"http://127.0.0.1:{free_port()}/cat.png"]) == 1
    assert "cannot fetch image URL" in one_line_error(capsys)

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert cli.main([*base, "--image-file", str(not_an_image)]) == 1
    assert "notes.png" in one_line_error(capsys)

    broken = tmp_path / "broken-ckpt"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "mvlm_llava", "text_config": ')
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert cli.main(["--model-path", str(broken), "--device", "cpu"]) == 1
    assert f"cannot load the checkpoint {broken}" in one_line_error(capsys)
    assert cli.main(["--model-path", str(tmp_path / "missing-ckpt"), "--device", "cpu"]) == 1
    assert "missing-ckpt" in one_line_error(capsys)

    assert cli.main([*base, "--conv-mode", "llava_v9"]) == 1
    assert "unknown chat template 'llava_v9'" in one_line_error(capsys)
    no_template = save_chat_checkpoint(checkpoints, str(tmp_path / "no-template"), conv_mode=None)
    assert cli.main(["--model-path", no_template, "--device", "cpu"]) == 1
    assert "pass --conv-mode" in one_line_error(capsys)

    if not torch.cuda.is_available():
        assert cli.main(["--model-path", model_dir, "--device", "cuda"]) == 1
        assert "no CUDA GPU" in one_line_error(capsys)


def test_missing_image_in_a_real_process_exits_1_without_traceback(model_dir):
    result = run_cli(["--model-path", model_dir, "--image-file", "/nonexistent/cat.jpg"], "Hi\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: image file /nonexistent/cat.jpg does not exist"
    assert result.stdout == ""


def test_an_empty_line_ends_the_chat(model_dir, image_file, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\nnever read\n"))
    assert cli.main(["--model-path", model_dir, "--image-file", image_file, "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "USER: exit...\n"


def test_load_8bit(model_dir, image_file, monkeypatch, capsys):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\n"))
    assert cli.main(["--model-path", model_dir, "--image-file", image_file, "--load-8bit", "--device", "cpu",
                     "--max-new-tokens", "3"]) == 0
    assert re.fullmatch(r"USER: ASSISTANT: .*\nUSER: \nexit...\n", capsys.readouterr().out, flags=re.DOTALL)


class FakeTokenizer:
    """Only what TextStreamer's constructor touches; the test feeds text to on_finalized_text directly."""


def streamed(pieces, stop):
    output = io.StringIO()
    streamer = StopStringStreamer(FakeTokenizer(), stop, output)
    for piece in pieces:
        streamer.on_finalized_text(piece)
    streamer.on_finalized_text("", stream_end=True)
    return output.getvalue()


def test_streamer_hides_the_stop_string_and_what_follows():
    assert streamed(["Hel", "lo #", "#", "# tail"], "###") == "Hello \n"
    assert streamed(["a #", "#b", " c"], "###") == "a ##b c\n"  # a false start is shown once settled
    assert streamed(["x</", "s>"], "</s>") == "x\n"
    assert streamed(["ends with #"], "###") == "ends with #\n"  # held back text is shown at the end
    assert streamed(["no stop"], None) == "no stop\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chat_on_cuda(model_dir, image_file, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\nAnd now?\n"))
    assert cli.main(["--model-path", model_dir, "--image-file", image_file, "--device", "cuda", "--temperature", "0",
                     "--max-new-tokens", "4", "--debug"]) == 0
    debug = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"prompt"')]
    assert len(debug) == 2 and debug[1]["prompt"].count("<image>") == 1
