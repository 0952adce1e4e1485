"""What multi-process training (torchrun DDP, DeepSpeed ZeRO-2/3) needs beyond `transformers.Trainer`.

- `init_deepspeed_comm`: on a GPU machine Trainer's arguments start DeepSpeed's communication
  themselves; with `--use_cpu True` (gloo: ZeRO on the CPU; `TrainingArguments` sets it under a launcher
  on a machine without an accelerator) they start only torch.distributed, and
  ZeRO-3's `deepspeed.zero.Init`, which partitions each weight as `from_pretrained` creates it, would
  see one process and reject the batch sizes of the config.
- `projector_for_saving`: stage 1 writes the projector alone, whole, even from ZeRO-3 partitions.
- `freeze_unreachable_tower_parameters`: tower weights past the selected feature layer never get a
  gradient, which strict DDP refuses.
- `leave_process_group`: every process waits for the others, then closes its connections, before it exits.

Text-only batches are the model's business: it runs a blank image through the tower and projector
(times 0), so every rank uses the same parameters every step (`LlavaForCausalLM.embed_multimodal`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mvlm.model.projector_weights import projector_state_dict
from mvlm.model.vision import image_size
from mvlm.model.zero3 import gathered, is_partitioned

logger = logging.getLogger(__name__)


def init_deepspeed_comm(training_args) -> None:
    """Start DeepSpeed's communication over the already running process group (a no-op without DeepSpeed).

    Call it after parsing the arguments (which starts torch.distributed) and before building the model.
    """
    if not training_args.deepspeed:
        return
    _ = training_args.device  # sets up torch.distributed (once; the property is cached)
    import deepspeed
    import deepspeed.comm

    if deepspeed.comm.is_initialized() or not torch.distributed.is_initialized():
        return
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), verbose=False)


def leave_process_group() -> None:
    """Wait for every process, then close the process group (a no-op when none was started).

    Without it each process exits as soon as its own work is done and tears its gloo/NCCL connections
    down while a peer may still be using them; with NNODES=2 the second machine's worker was seen to
    abort ("terminate called without an active exception") after a training that had succeeded.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def projector_for_saving(model: nn.Module, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The tensors stage 1 writes to `mm_projector.safetensors`: Trainer's `state_dict`, or gathered here.

    Under ZeRO-3 Trainer's gathered state dict exists on rank 0 only, and only when the DeepSpeed config
    sets `stage3_gather_16bit_weights_on_model_save` (otherwise it is empty). The projector is small, so
    it is gathered here instead, the same way on every rank; call this on all ranks. Without ZeRO-3 the
    weights are whole and `state_dict` (None: the model's own) is returned unchanged.
    """
    params = list(model.multi_modal_projector.parameters())
    if not any(is_partitioned(param) for param in params):
        return state_dict
    with gathered(params):
        # Copies: the gathered storage is released when the block ends.
        return {key: tensor.clone() for key, tensor in projector_state_dict(model).items()}


def freeze_unreachable_tower_parameters(model: nn.Module) -> list[str]:
    """Freeze the trainable vision-tower parameters that no gradient reaches; returns their names.

    The tower's layers after the selected feature layer (LLaVA reads the second-to-last), its final
    norm and its pooling head never touch the features the projector reads. Under DDP without
    `find_unused_parameters` (Trainer's choice with gradient checkpointing) they fail the second step
    ("Expected to have finished reduction in the prior iteration"); with it, DDP searches the graph
    every step. A backward pass through the tower on one blank image finds them, for every tower and
    `--mm_vision_select_layer`. Numerically nothing changes: they would never get a gradient.
    Skipped under ZeRO-3, whose partitioned weights run only inside DeepSpeed's engine (and which
    tolerates unused parameters).
    """
    bare = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the model
    tower = bare.vision_tower
    trainable = [(name, param) for name, param in tower.named_parameters() if param.requires_grad]
    if not trainable or any(is_partitioned(param) for param in tower.parameters()):
        return []
    device = next(tower.parameters()).device
    # The input requires grad so that reentrant gradient checkpointing (QLoRA turns it on) still
    # propagates to the weights inside checkpointed layers.
    blank = torch.zeros(1, 3, *image_size(bare.config.vision_config), device=device, requires_grad=True)
    bare.zero_grad(set_to_none=True)
    bare.get_image_features(blank).float().sum().backward()
    unreachable = [name for name, param in trainable if param.grad is None]
    bare.zero_grad(set_to_none=True)
    for name, param in trainable:
        if name in unreachable:
            param.requires_grad = False
    if unreachable:
        logger.info("vision tower: %s get no gradient (they come after the selected feature layer) and stay "
                    "frozen", ", ".join(_modules(unreachable)))
    return ["vision_tower." + name for name in unreachable]


def _modules(names: list[str]) -> list[str]:
    """Parameter names shortened to their layer ('encoder.layers.2.mlp.fc1.weight' -> 'encoder.layers.2')."""
    modules: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        numbered = next((index for index, part in enumerate(parts) if part.isdigit()), None)
        modules[".".join(parts[: numbered + 1]) if numbered is not None else ".".join(parts[:-1]) or name] = None
    return list(modules)
