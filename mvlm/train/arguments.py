"""Command-line arguments with LLaVA's `llava/train/train.py` names and meanings.

Everything `transformers.TrainingArguments` has (deepspeed, bf16, gradient checkpointing, saving,
logging, resume, report_to) works as usual; the fields below are LLaVA's, plus a few of mvlm's own
(`--lora_vision_tower`, `--mm_vision_tower_lr`, `--packing`, `--skip_bad_samples`, `--fused_loss`).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import transformers
from transformers.utils import is_torch_hpu_available, is_torch_xla_available

from mvlm.errors import FlagError

__all__ = ["DataArguments", "FlagError", "ModelArguments", "TrainingArguments"]


@dataclasses.dataclass
class ModelArguments:
    model_name_or_path: str = dataclasses.field(
        metadata={"help": "An LLM checkpoint (stage 1) or an mvlm checkpoint to continue from."}
    )
    conv_mode: str = dataclasses.field(
        default="vicuna_v1", metadata={"aliases": ["--version"], "help": "Chat template (plain for stage 1); "
                                       "--version is LLaVA's name for it."}
    )
    vision_tower: str | None = dataclasses.field(default=None, metadata={"help": "CLIP / SigLIP / InternViT folder."})
    mm_projector_type: str = dataclasses.field(default="mlp2x_gelu", metadata={"help": "linear, mlpNx_gelu, identity."})
    mm_vision_select_layer: str = dataclasses.field(
        default="-2", metadata={"help": "Tower layer whose features are used; several as '-2,-5' (concatenated)."}
    )
    mm_vision_select_feature: str = dataclasses.field(
        default="patch", metadata={"help": "patch (drop CLS where the tower has one) or cls_patch (keep it)."}
    )
    pretrain_mm_mlp_adapter: str | None = dataclasses.field(
        default=None, metadata={"help": "Stage-1 projector: mm_projector.safetensors, a checkpoint folder, or "
                                        "LLaVA's mm_projector.bin."}
    )
    tune_mm_mlp_adapter: bool = dataclasses.field(default=False, metadata={"help": "Stage 1: train only the projector."})
    freeze_backbone: bool = dataclasses.field(default=False, metadata={"help": "Stage 2: keep the LLM frozen."})
    unfreeze_mm_vision_tower: bool = dataclasses.field(default=False, metadata={"help": "Train the vision tower too."})
    mm_vision_tower_lr: float | None = dataclasses.field(default=None, metadata={"help": "Learning rate of the tower."})
    lora_vision_tower: bool = dataclasses.field(default=False, metadata={"help": "LoRA on the vision tower (XTuner)."})
    attn_implementation: str | None = dataclasses.field(
        default=None, metadata={"help": "flash_attention_2, sdpa or eager; default: the best available. With "
                                        "--packing also mvlm_varlen (CUDA) or mvlm_per_sample (any device)."}
    )
    mm_use_im_start_end: bool = dataclasses.field(default=False, metadata={"help": "LLaVA flag; only False."})
    mm_use_im_patch_token: bool = dataclasses.field(default=False, metadata={"help": "LLaVA flag; only False."})

    def __post_init__(self):
        if self.mm_use_im_start_end or self.mm_use_im_patch_token:
            raise FlagError("--mm_use_im_start_end / --mm_use_im_patch_token are not supported (LLaVA-1.5 uses "
                             "False for both); drop them")
        if self.mm_vision_select_feature not in ("patch", "cls_patch"):
            raise FlagError(f"--mm_vision_select_feature must be patch or cls_patch, got "
                             f"{self.mm_vision_select_feature!r}")

    @property
    def vision_feature_layer(self) -> int | list[int]:
        layers = [int(part) for part in str(self.mm_vision_select_layer).split(",") if part.strip()]
        return layers[0] if len(layers) == 1 else layers


@dataclasses.dataclass
class DataArguments:
    data_path: list[str] = dataclasses.field(
        default_factory=list, metadata={"help": "LLaVA json, jsonl, parquet or a saved datasets folder; several allowed."}
    )
    image_folder: str | None = dataclasses.field(default=None, metadata={"help": "Where relative image paths point."})
    image_aspect_ratio: str = dataclasses.field(default="pad", metadata={"help": "square, pad or anyres."})
    image_grid_pinpoints: str | None = dataclasses.field(
        default=None, metadata={"help": "anyres candidate resolutions, e.g. '[(672, 336), (336, 672)]'."}
    )
    lazy_preprocess: bool = dataclasses.field(default=True, metadata={"help": "Accepted for LLaVA scripts; always lazy."})
    is_multimodal: bool = dataclasses.field(default=True, metadata={"help": "Accepted for LLaVA scripts."})
    packing: bool = dataclasses.field(
        default=False, metadata={"help": "Each batch as one row without padding, with its samples' boundaries "
                                         "(attention stays within each sample)."}
    )
    skip_bad_samples: bool = dataclasses.field(
        default=False, metadata={"help": "Skip and count bad samples instead of stopping at the first one."}
    )


@dataclasses.dataclass
class TrainingArguments(transformers.TrainingArguments):
    remove_unused_columns: bool = False
    freeze_mm_mlp_adapter: bool = dataclasses.field(default=False, metadata={"help": "Keep the projector frozen."})
    model_max_length: int = dataclasses.field(default=2048, metadata={"help": "Tokens per sample, images included."})
    mm_projector_lr: float | None = dataclasses.field(default=None, metadata={"help": "Learning rate of the projector."})
    group_by_modality_length: bool = dataclasses.field(
        default=False, metadata={"help": "Batches of similar length, image and text-only samples apart."}
    )
    fused_loss: bool = dataclasses.field(
        default=True, metadata={"help": "Loss from the LM's last hidden states in chunks, labelled positions only, "
                                        "without the full logits (Liger's kernel on CUDA when installed). False: "
                                        "the LM's own loss."}
    )
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_bias: str = "none"
    bits: int = dataclasses.field(default=16, metadata={"help": "4 or 8: QLoRA over a quantized LLM."})
    double_quant: bool = True
    quant_type: str = "nf4"
    warmup_ratio: float | None = dataclasses.field(
        default=None, metadata={"help": "LLaVA scripts' flag (transformers 5 dropped it): the fraction of steps to "
                                        "warm up over; same as --warmup_steps with a value below 1."}
    )

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise FlagError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise FlagError(f"give one of --warmup_ratio ({self.warmup_ratio:g}) and --warmup_steps "
                                f"({self.warmup_steps:g}), not both")
            self.warmup_steps = self.warmup_ratio
        if not self.use_cpu and _started_by_a_launcher() and not _has_accelerator():
            # torchrun on a CPU-only machine: train as with --use_cpu True. Set before the parent's
            # __post_init__, which sets up the processes (see _has_accelerator for what happens otherwise).
            self.use_cpu = True
        super().__post_init__()


def _started_by_a_launcher() -> bool:
    """True in a process that torchrun or DeepSpeed's launcher started (accelerate's own test)."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1


def _has_accelerator() -> bool:
    """Whether this machine has a GPU or another accelerator, which accelerate sets up processes on by itself.

    Without one, accelerate sets up a launcher's processes as distributed only when told they run on the
    CPU (--use_cpu True, gloo); otherwise each counts itself alone: under DDP every process trains alone on
    the whole data, and under ZeRO DeepSpeed (which counts them all) rejects Trainer's batch sizes.
    """
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, MPS, XPU, NPU, ...
    found = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return found or is_torch_xla_available() or is_torch_hpu_available()
