"""Which parts of the model train, how, and at which learning rate: decided once, as data, from the flags.

The three parts are `vision_tower`, `multi_modal_projector` and `language_model`; each is frozen,
fully trained, or trained through LoRA adapters. `apply_policy` sets `requires_grad` accordingly (the
tower's weights past the feature layer never shape the features and stay frozen), `parameter_groups`
builds the optimizer groups (per-part learning rates, no weight decay on biases and norms), and
`policy_table` is what training logs at start.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from torch import nn

from mvlm.errors import FlagError
from mvlm.model.tower_depth import unused_tower_modules
from mvlm.model.zero3 import full_numel

PARTS = ("vision_tower", "multi_modal_projector", "language_model")
MODES = ("frozen", "full", "lora")


@dataclasses.dataclass(frozen=True)
class PartPolicy:
    mode: str
    learning_rate: float | None = None
    """None: the run's --learning_rate."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"training mode must be one of {MODES}, got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class TrainingPolicy:
    vision_tower: PartPolicy
    multi_modal_projector: PartPolicy
    language_model: PartPolicy

    def part(self, name: str) -> PartPolicy:
        return getattr(self, name)

    @property
    def projector_only(self) -> bool:
        """Stage 1: only the projector learns, so a checkpoint needs to hold only the projector."""
        return (
            self.multi_modal_projector.mode == "full"
            and self.vision_tower.mode == "frozen"
            and self.language_model.mode == "frozen"
        )

    @property
    def lora_parts(self) -> list[str]:
        return [name for name in PARTS if self.part(name).mode == "lora"]

    @property
    def uses_lora(self) -> bool:
        return bool(self.lora_parts)


def policy_from_flags(
    tune_mm_mlp_adapter: bool = False,
    freeze_backbone: bool = False,
    freeze_mm_mlp_adapter: bool = False,
    unfreeze_mm_vision_tower: bool = False,
    lora_enable: bool = False,
    lora_vision_tower: bool = False,
    mm_projector_lr: float | None = None,
    mm_vision_tower_lr: float | None = None,
) -> TrainingPolicy:
    """LLaVA's flags, with their meanings: stage 1 is `tune_mm_mlp_adapter`; otherwise stage 2."""
    projector = PartPolicy("frozen" if freeze_mm_mlp_adapter else "full", mm_projector_lr)
    if tune_mm_mlp_adapter:
        if freeze_mm_mlp_adapter:
            raise FlagError("--tune_mm_mlp_adapter trains only the projector; it cannot be combined with "
                             "--freeze_mm_mlp_adapter")
        return TrainingPolicy(PartPolicy("frozen"), PartPolicy("full", mm_projector_lr), PartPolicy("frozen"))
    if lora_enable and freeze_backbone:
        raise FlagError("--lora_enable trains LoRA adapters on the LLM; drop --freeze_backbone or --lora_enable")
    language_model = PartPolicy("lora" if lora_enable else "frozen" if freeze_backbone else "full")
    if lora_vision_tower:
        tower = PartPolicy("lora", mm_vision_tower_lr)
    elif unfreeze_mm_vision_tower:
        tower = PartPolicy("full", mm_vision_tower_lr)
    else:
        tower = PartPolicy("frozen")
    return TrainingPolicy(tower, projector, language_model)


def part_of(parameter_name: str) -> str:
    """Which part a parameter belongs to, by the first path component that names one (PEFT adds prefixes)."""
    for component in parameter_name.split("."):
        if component in PARTS:
            return component
    raise ValueError(f"parameter {parameter_name!r} belongs to none of {PARTS}")


def apply_policy(model: nn.Module, policy: TrainingPolicy) -> None:
    """Set `requires_grad`: full parts train every weight, frozen parts none.

    LoRA parts keep what PEFT marked trainable when it added the adapters (the adapters, and biases
    as --lora_bias says); a LoRA part without adapters is a bug upstream, refused here.
    """
    with_adapters = {part_of(name) for name, _ in model.named_parameters() if "lora_" in name}
    for part in PARTS:
        if policy.part(part).mode == "lora" and part not in with_adapters:
            raise ValueError(f"the policy trains {part} through LoRA, but it has no LoRA adapters")
    unused = {id(parameter) for _, _, parameter in _unused_tower_parameters(model)}
    for name, parameter in model.named_parameters():
        if id(parameter) in unused:  # past the feature layer: no gradient reaches it (adapters there too)
            parameter.requires_grad = False
            continue
        mode = policy.part(part_of(name)).mode
        if mode != "lora":
            parameter.requires_grad = mode == "full"


def parameter_groups(
    model: nn.Module, policy: TrainingPolicy, learning_rate: float, weight_decay: float, decay_names: Iterable[str]
) -> list[dict[str, Any]]:
    """Optimizer groups keyed by (learning rate, weight decay); frozen parameters are left out."""
    decay_names = set(decay_names)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part_lr = policy.part(part_of(name)).learning_rate
        key = (part_lr if part_lr is not None else learning_rate, weight_decay if name in decay_names else 0.0)
        groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def policy_table(model: nn.Module, policy: TrainingPolicy, learning_rate: float) -> str:
    """A table of each part's mode, trainable / total parameters and learning rate."""
    rows = [("module", "mode", "trainable", "total", "learning rate")]
    for part in PARTS:
        params = [(name, p) for name, p in model.named_parameters() if part_of(name) == part]
        trainable = sum(full_numel(p) for _, p in params if p.requires_grad)
        total = sum(full_numel(p) for _, p in params)
        lr = policy.part(part).learning_rate
        shown_lr = "-" if policy.part(part).mode == "frozen" else f"{lr if lr is not None else learning_rate:g}"
        rows.append((part, policy.part(part).mode, f"{trainable:,}", f"{total:,}", shown_lr))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)
    unused = _unused_tower_parameters(model)
    if unused:
        modules = list(dict.fromkeys(path for path, _, _ in unused))
        table += (f"\nvision_tower: {', '.join(modules)} ({sum(full_numel(p) for _, _, p in unused):,} parameters) "
                  "come after the feature layer: frozen, the layers not run")
    return table


def _unused_tower_parameters(model: nn.Module) -> list[tuple[str, str, nn.Parameter]]:
    """(module path, parameter name, parameter) of the tower weights past the feature layer (PEFT-wrapped or not)."""
    bare = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [
        (path, name, parameter)
        for path, module in unused_tower_modules(bare.vision_tower, bare.config.vision_feature_layer)
        for name, parameter in module.named_parameters()
    ]
