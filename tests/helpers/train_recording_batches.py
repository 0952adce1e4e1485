"""`python -m mvlm.train.train`, recording on each rank which training batches held images.

Used by tests/test_distributed.py under torchrun: `train_recording_batches.py LOG_DIR <train flags>`
runs the real entry point with the flags unchanged and writes LOG_DIR/batches-rank<R>.json, a list with
one entry per training forward pass: true when the batch had images, false when it was text-only.
The model's own method still runs; the wrapper only looks at its arguments. It also fails the run if
training returned with its process group still open.
"""

import json
import os
import sys

import torch

from mvlm.model.modeling import LlavaForCausalLM
from mvlm.train.train import main

seen: list[bool] = []
embed_multimodal = LlavaForCausalLM.embed_multimodal


def recording_embed_multimodal(self, input_ids, pixel_values):
    if self.training:
        seen.append(pixel_values is not None)
    return embed_multimodal(self, input_ids, pixel_values)


if __name__ == "__main__":
    log_dir, argv = sys.argv[1], sys.argv[2:]
    LlavaForCausalLM.embed_multimodal = recording_embed_multimodal
    main(argv)
    # Each rank waits for the others and closes its connections before it exits (an abort at exit otherwise).
    assert not torch.distributed.is_initialized(), "training ended with its process group still open"
    with open(os.path.join(log_dir, f"batches-rank{os.environ.get('RANK', '0')}.json"), "w") as handle:
        json.dump(seen, handle)
