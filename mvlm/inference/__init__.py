"""Prompt -> answer, for every front end (chat CLI, benchmark runners, servers).

One path for every front end, so a chat answer and a benchmark answer to the same question are the same
tokens: the checkpoint's own template (`model.config.conv_mode`) and aspect-ratio mode, prompts tokenized
exactly as training tokenized them, greedy unless a temperature is given, and a stop at the template's
stop string. Batches are left-padded, so every row predicts its next token from its own last prompt token
and a batch gives the same tokens as one question at a time. (Not bit for bit: other batch shapes round
differently, about 1e-5 of the logits in float32, so a token can differ only where two candidates tie
that closely; measured once in 480 greedy tokens of a random tiny model, never in its short answers.)

Layer: above `mvlm.loading`; below the front ends (`train`, `serve`, `eval`, `convert`).
"""

from mvlm.inference.devices import check_device, default_device, input_device
from mvlm.inference.generation import (
    Generated,
    batch_pixel_values,
    generate_answers,
    generation_config,
    left_padded_batch,
)
from mvlm.inference.prompts import EncodedPrompt, encode_prompt, new_conversation, resolve_conv_mode
from mvlm.inference.session import load_for_inference
from mvlm.inference.stopping import DecodedTextStop, StopStringStreamer, cut_at_stop, stop_criteria

__all__ = [
    "DecodedTextStop",
    "EncodedPrompt",
    "Generated",
    "batch_pixel_values",
    "StopStringStreamer",
    "check_device",
    "cut_at_stop",
    "default_device",
    "encode_prompt",
    "generate_answers",
    "generation_config",
    "input_device",
    "left_padded_batch",
    "load_for_inference",
    "new_conversation",
    "resolve_conv_mode",
    "stop_criteria",
]
