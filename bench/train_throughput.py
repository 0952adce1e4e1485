"""Training throughput of mvlm's stage-2 step: tokens/s, step time and peak memory, as ratios to a baseline
measured in the same run (padded batches with SDPA attention).

Models are random, built from configs (nothing is downloaded): `tiny` is the test suite's model (4 image
tokens), `tiny-llava` a 128-wide, 4-layer LM with a 2-layer tower at 336 px (576 image tokens, LLaVA-shaped
sequences at CPU cost), `small` a Llama-shaped 1024-wide, 12-layer LM with a ViT-B-sized tower. The data is
the synthetic coloured-squares task with every third sample text-only, so batches mix long (image)
and short (text) samples as LLaVA's mix665k does.

    python bench/train_throughput.py --size tiny-llava                # CPU, fp32
    python bench/train_throughput.py --size small --dtype bf16        # GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import synthetic  # noqa: E402
import tiny  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from mvlm.data.dataset import DataConfig, LazySupervisedDataset, SupervisedCollator  # noqa: E402
from mvlm.data.formats import load_samples  # noqa: E402
from mvlm.model.builder import build_model  # noqa: E402
from mvlm.model.packed_attention import PACKED_ATTENTIONS, PER_SAMPLE, VARLEN, use_packed_attention  # noqa: E402

VARIANTS = {  # name: (attention the model is built with, attention of packed batches; None: padded batches)
    "padded-sdpa": ("sdpa", None),
    "padded-eager": ("eager", None),
    "packed-per-sample": ("sdpa", PER_SAMPLE),
    "packed-varlen": ("sdpa", VARLEN),
    "packed-flash": ("flash_attention_2", "flash_attention_2"),
}
DEFAULT_VARIANTS = {"cpu": "padded-sdpa,packed-per-sample,padded-eager",
                    "cuda": "padded-sdpa,packed-varlen,packed-per-sample,packed-flash"}


# size: (LM shape, tower shape); every tower is 336 px with 14 px patches, so an image is 576 tokens as in LLaVA-1.5.
SHAPES = {
    "tiny-llava": (dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2),
                   dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)),
    "small": (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                   num_key_value_heads=16),
              dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
}


def write_models(size: str, root: str) -> tuple[str, str]:
    if size == "tiny":
        return (tiny.save_llm("llama", os.path.join(root, "llm")),
                tiny.save_vision_tower("clip", os.path.join(root, "tower")))
    llm_shape, tower_shape = SHAPES[size]
    tokenizer = tiny.train_tokenizer("sentencepiece", True)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, **llm_shape))
    llm.save_pretrained(os.path.join(root, "llm"))
    tokenizer.save_pretrained(os.path.join(root, "llm"))
    tower = CLIPVisionModel(CLIPVisionConfig(image_size=336, patch_size=14, **tower_shape))
    tower.save_pretrained(os.path.join(root, "tower"))
    return os.path.join(root, "llm"), os.path.join(root, "tower")


def measure(llm: str, tower: str, data: str, folder: str, attention: str, packed: str | None,
            args) -> dict[str, float]:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    model, tokenizer, image_processor = build_model(llm, tower, torch_dtype=dtype, attn_implementation=attention)
    model.to(device).train()
    if packed is not None:  # as training with --packing sets it up
        use_packed_attention(model, packed if packed in PACKED_ATTENTIONS else None, device)
    model.vision_tower.requires_grad_(False)
    dataset = LazySupervisedDataset(load_samples(data), tokenizer, image_processor,
                                    DataConfig(template="vicuna_v1", num_image_tokens=model.num_image_tokens,
                                               image_folder=folder, max_length=args.max_length))
    collator = SupervisedCollator(tokenizer.pad_token_id, packing=packed is not None)

    def collate(features):
        return collator(features), sum(len(feature["input_ids"]) for feature in features)

    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0), drop_last=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times, tokens, batches = [], 0, iter(loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        try:
            batch, real_tokens = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch, real_tokens = next(batches)
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        _sync(device)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            tokens += real_tokens
    result = {"step_s": sum(times) / len(times), "tokens_per_s": tokens / sum(times)}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", *SHAPES], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)}; "
                                                          f"default: {DEFAULT_VARIANTS}")
    args = parser.parse_args()
    args.variants = args.variants or DEFAULT_VARIANTS[torch.device(args.device).type]
    with tempfile.TemporaryDirectory() as root:
        llm, tower = write_models(args.size, root)
        data = synthetic.write_dataset(os.path.join(root, "data"), args.samples, seed=0, kind="qa", text_only_every=3)
        print(f"size={args.size} device={args.device} dtype={args.dtype} batch={args.batch_size}")
        baseline = None
        for name in args.variants.split(","):
            attention, packed = VARIANTS[name]
            try:
                result = measure(llm, tower, data, os.path.join(root, "data"), attention, packed, args)
            except (ImportError, ValueError) as error:  # e.g. flash-attn not installed, no varlen kernel here
                print(f"{name:18s} unavailable: {str(error).splitlines()[0]}")
                continue
            baseline = baseline or result
            ratios = " ".join(f"{key}={value:.4g} ({value / baseline[key]:.2f}x)" for key, value in result.items())
            print(f"{name:18s} {ratios}", flush=True)


if __name__ == "__main__":
    main()
