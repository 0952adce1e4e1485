"""Shared fixtures: tiny checkpoints written once per test session, tokenizers trained in-process."""

from __future__ import annotations

import os

import pytest
import torch

from mvlm.data.processors import add_image_token
from mvlm.loading import load_pretrained_model
from tests.helpers import synthetic, tiny
from tests.helpers.chat_model import save_chat_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Factory of tiny checkpoint folders, each written once: checkpoints('llm', 'phi'), ('tower', 'clip')."""
    root = str(tmp_path_factory.mktemp("checkpoints"))
    made: dict[tuple[str, str], str] = {}
    writers = {"llm": tiny.save_llm, "tower": tiny.save_vision_tower, "full_clip": lambda _kind, folder: tiny.save_full_clip(folder)}

    def get(what: str, kind: str) -> str:
        if (what, kind) not in made:
            made[(what, kind)] = writers[what](kind, tiny.folder_in(root, f"{what}-{kind}"))
        return made[(what, kind)]

    return get


@pytest.fixture(scope="session")
def tokenizers():
    """Tokenizers with `<image>` added: ('sentencepiece', True) is Llama-like, ('bytelevel', False) GPT-2-like."""
    made = {}

    def get(kind: str, with_bos: bool):
        if (kind, with_bos) not in made:
            tokenizer = tiny.train_tokenizer(kind, with_bos)
            add_image_token(tokenizer)
            made[(kind, with_bos)] = tokenizer
        return made[(kind, with_bos)]

    return get


@pytest.fixture
def eight_gpus(tmp_path) -> dict[str, str]:
    """PATH with an `nvidia-smi` that lists eight GPUs: this CPU machine has none, and only the command
    the scripts compose for a GPU machine is checked with it (DRY_RUN), never run."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo \"GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)\"; done\n")
    fake.chmod(0o755)
    return {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def model_dir(checkpoints, tmp_path_factory):
    """A chat checkpoint per test module (tests.helpers.chat_model: the v1 template, padded images)."""
    return save_chat_checkpoint(checkpoints, str(tmp_path_factory.mktemp("ckpt") / "chat-model"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    """(tokenizer, model, image_processor) of `model_dir`, loaded once per module for reference answers."""
    tokenizer, model, image_processor, _ = load_pretrained_model(model_dir)
    return tokenizer, model, image_processor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A caption set and a QA set (24 samples each) with their images, once per test module."""
    folder = str(tmp_path_factory.mktemp("data"))
    return {
        "folder": folder,
        "caption": synthetic.write_dataset(folder, 24, seed=1, kind="caption"),
        "qa": synthetic.write_dataset(folder, 24, seed=2, kind="qa", text_only_every=5),
    }
