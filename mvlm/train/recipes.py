"""The published training recipes as data: one frozen `Recipe` per recipe and stage.

A recipe is what the papers and READMEs publish (../shared/seeds/): the LLM, the vision tower, the chat
template, the data, the global batch, learning rates, epochs, the maximum length, which parts train, and
the DeepSpeed config the authors launched with. `python -m mvlm.train.train --recipe NAME --stage 1|2`
turns one into default flags (mvlm/train/recipe_flags.py), and scripts/*.sh launch them on any hardware
(mvlm/train/launch_plan.py), so the numbers live here once instead of in every script.

Paths follow LLaVA's layout (`./playground/data/...`, `./checkpoints/<model>[-pretrain]`), as LLaVA's own
scripts do; a flag overrides any of them. Field names are the flags of `mvlm.train.train` where they are
flags (`FLAG_SPELLINGS` lists the two passed under another name), so a recipe maps to flags one to one. The fields that are not flags (name,
stage, title, source, checkpoint_name, global_batch, deepspeed) say so in `NOT_FLAGS`.

No torch or transformers here: the scripts ask for a recipe before any heavy import.
"""

from __future__ import annotations

import dataclasses

from mvlm.errors import FlagError

# LLaVA's data layout (LLaVA-1.5 README, docs/Data.md), which the LLaVA scripts default to.
PRETRAIN_DATA = "./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
PRETRAIN_IMAGES = "./playground/data/LLaVA-Pretrain/images"
FINETUNE_DATA = "./playground/data/llava_v1_5_mix665k.json"
FINETUNE_IMAGES = "./playground/data"
PROJECTOR_FILE = "mm_projector.safetensors"

STAGES = {1: "feature alignment: only the projector trains", 2: "visual instruction tuning"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """One stage of one published recipe. Flag fields set to None are left to mvlm.train.train's defaults."""

    # What the recipe is (not flags).
    name: str
    stage: int
    title: str
    source: str
    """Where the numbers come from, and where mvlm departs from them."""
    checkpoint_name: str
    """The model's folder name under ./checkpoints (e.g. mipha-3b), which the scripts' OUTPUT_SUFFIX extends."""
    global_batch: int
    """Samples per optimizer step over all processes: per-device batch x processes x gradient accumulation."""
    deepspeed: str
    """The DeepSpeed config (a file in scripts/) the scripts launch with on GPUs."""

    # The flags, in the order --print-recipe shows them.
    model_name_or_path: str
    conv_mode: str
    """The chat template, passed as LLaVA's `--version`."""
    data_path: str
    image_folder: str
    vision_tower: str
    tune_mm_mlp_adapter: bool | None = None
    pretrain_mm_mlp_adapter: str | None = None
    unfreeze_mm_vision_tower: bool | None = None
    lora_vision_tower: bool | None = None
    mm_vision_tower_lr: float | None = None
    group_by_modality_length: bool | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    image_aspect_ratio: str
    output_dir: str
    num_train_epochs: float
    per_device_train_batch_size: int
    save_strategy: str = "steps"
    save_steps: int
    save_total_limit: int = 1
    learning_rate: float
    mm_projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    """Passed as --warmup_steps (transformers 5 reads a value below 1 as a ratio), as the scripts always did."""
    lr_scheduler_type: str = "cosine"
    logging_steps: int = 1
    model_max_length: int
    """Tokens per sample, image tokens included (XTuner's max_length counts text only)."""
    gradient_checkpointing: bool = True
    dataloader_num_workers: int = 4
    report_to: str = "none"
    lora_enable: bool | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    bits: int | None = None
    quant_type: str | None = None
    double_quant: bool | None = None

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"{self.name}: stage must be 1 or 2, got {self.stage}")
        if (self.stage == 1) != bool(self.tune_mm_mlp_adapter):
            raise ValueError(f"{self.name} stage {self.stage}: --tune_mm_mlp_adapter is stage 1's, and only its")

    def flags(self) -> list[tuple[str, str]]:
        """(flag, value) for every flag the recipe sets, in field order; None fields are left out."""
        pairs = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in NOT_FLAGS or value is None:
                continue
            pairs.append((FLAG_SPELLINGS.get(field.name, field.name), format_value(value)))
        return pairs


NOT_FLAGS = frozenset({"name", "stage", "title", "source", "checkpoint_name", "global_batch", "deepspeed"})
FLAG_SPELLINGS = {"conv_mode": "version", "warmup_ratio": "warmup_steps"}
"""Fields passed under another flag: LLaVA's name for the template; the warm-up as the scripts always passed it."""


def format_value(value: bool | int | float | str) -> str:
    """A flag value as a user writes it: True, 2, 0.03, 2e-5 (not 2e-05 or 0.001 for 1e-3)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value.is_integer():
        return str(int(value))
    if abs(value) < 0.01:
        mantissa, exponent = f"{value:.15e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return repr(value)


def pretrain_paths(checkpoint_name: str) -> dict[str, str]:
    """Stage 1's data (LLaVA's 558K LAION-CC-SBU captions) and output folder."""
    return dict(data_path=PRETRAIN_DATA, image_folder=PRETRAIN_IMAGES,
                output_dir=f"./checkpoints/{checkpoint_name}-pretrain")


def finetune_paths(checkpoint_name: str, suffix: str = "") -> dict[str, str]:
    """Stage 2's data (LLaVA's mix665k), the stage-1 projector it starts from, and its output folder."""
    return dict(data_path=FINETUNE_DATA, image_folder=FINETUNE_IMAGES,
                pretrain_mm_mlp_adapter=f"./checkpoints/{checkpoint_name}-pretrain/{PROJECTOR_FILE}",
                output_dir=f"./checkpoints/{checkpoint_name}{suffix}")


def with_lora(recipe: Recipe) -> Recipe:
    """LLaVA-1.5's LoRA recipe (its scripts/v1_5/finetune_lora.sh) over a stage-2 recipe's models, data and
    batch: LoRA r 128, alpha 256 on every linear layer of the LLM at 2e-4, the projector fully trained at
    2e-5, and a vision tower that the recipe trains fully trained at 2e-5 too."""
    if recipe.stage != 2:
        raise ValueError(f"LoRA is a stage-2 recipe; {recipe.name} stage {recipe.stage} trains only the projector")
    return dataclasses.replace(
        recipe, lora_enable=True, lora_r=128, lora_alpha=256, lora_dropout=0.05, learning_rate=2e-4,
        mm_projector_lr=2e-5, mm_vision_tower_lr=2e-5 if recipe.unfreeze_mm_vision_tower else None,
        output_dir=finetune_paths(recipe.checkpoint_name, "-lora")["output_dir"],
    )


def with_qlora(recipe: Recipe) -> Recipe:
    """`with_lora` over a 4-bit NF4 LLM with double quantization (LLaVA's finetune_qlora.sh), under ZeRO-2:
    ZeRO-3 cannot partition 4-bit weights."""
    return dataclasses.replace(
        with_lora(recipe), bits=4, quant_type="nf4", double_quant=True, deepspeed="zero2.json",
        output_dir=finetune_paths(recipe.checkpoint_name, "-qlora")["output_dir"],
    )


VARIANTS = {"lora": with_lora, "qlora": with_qlora}
"""What scripts/finetune_lora.sh and finetune_qlora.sh lay over any recipe's stage 2."""


def renamed(recipe: Recipe, name: str, title: str) -> Recipe:
    """The same stage under another recipe's name (a LoRA recipe's stage 1 is its full recipe's)."""
    return dataclasses.replace(recipe, name=name, title=title)


# ---------------------------------------------------------------- Mipha (seed 003)
# Pretraining 256 x 1e-3, 1 epoch; finetuning 128 x 2e-5, 2 epochs; max length 2048, no weight decay.
# SigLIP-so400m/384 in every size; the vision tower trains in stage 2 at the LLM's learning rate.

MIPHA_SOURCE = ("seed 003 (Mipha): 256 x 1e-3 for 1 epoch, then 128 x 2e-5 for 2 epochs, max length 2048, no weight "
                "decay, the vision tower trained in stage 2; ZeRO-3 in stage 2")
MIPHA_3B = (
    Recipe(
        name="mipha3b", stage=1, title="Mipha-3B (Phi-2 + SigLIP-so400m/384)", source=MIPHA_SOURCE,
        checkpoint_name="mipha-3b", global_batch=256, deepspeed="zero2.json",
        model_name_or_path="microsoft/phi-2", conv_mode="plain", **pretrain_paths("mipha-3b"),
        vision_tower="google/siglip-so400m-patch14-384", tune_mm_mlp_adapter=True, image_aspect_ratio="square",
        num_train_epochs=1, per_device_train_batch_size=32, save_steps=24000, learning_rate=1e-3,
        model_max_length=2048,
    ),
    Recipe(
        name="mipha3b", stage=2, title="Mipha-3B (Phi-2 + SigLIP-so400m/384)", source=MIPHA_SOURCE,
        checkpoint_name="mipha-3b", global_batch=128, deepspeed="zero3.json",
        model_name_or_path="microsoft/phi-2", conv_mode="phi", **finetune_paths("mipha-3b"),
        vision_tower="google/siglip-so400m-patch14-384", unfreeze_mm_vision_tower=True,
        group_by_modality_length=True, image_aspect_ratio="pad", num_train_epochs=2, per_device_train_batch_size=4,
        save_steps=50000, learning_rate=2e-5, model_max_length=2048,
    ),
)


def mipha_size(name: str, title: str, checkpoint_name: str, llm: str, template: str) -> tuple[Recipe, Recipe]:
    """Mipha-3B's two stages with another LLM and its chat template (the paper trains every size alike)."""
    stage1, stage2 = MIPHA_3B
    return (
        dataclasses.replace(stage1, name=name, title=title, checkpoint_name=checkpoint_name, model_name_or_path=llm,
                            **pretrain_paths(checkpoint_name)),
        dataclasses.replace(stage2, name=name, title=title, checkpoint_name=checkpoint_name, model_name_or_path=llm,
                            conv_mode=template, **finetune_paths(checkpoint_name)),
    )


MIPHA_2_4B = mipha_size("mipha2.4b", "Mipha-2.4B (Gemma-2B + SigLIP-so400m/384)", "mipha-2.4b", "google/gemma-2b",
                        "gemma")
MIPHA_1_6B = mipha_size("mipha1.6b", "Mipha-1.6B (Phi-1.5 + SigLIP-so400m/384)", "mipha-1.6b", "microsoft/phi-1_5",
                        "phi")

# ---------------------------------------------------------------- LLaVA-1.5 (seed 004, LLaVA's scripts/v1_5)

LLAVA15_SOURCE = ("seed 004 (LLaVA-1.5 README): 256 x 1e-3 for 1 epoch (32/GPU on 8), then 128 x 2e-5 for 1 epoch "
                  "(16/GPU on 8), max length 2048, no weight decay, the vision tower frozen; ZeRO-2 then ZeRO-3")
LLAVA15 = (
    Recipe(
        name="llava15", stage=1, title="LLaVA-1.5-7B (Vicuna-7B-v1.5 + CLIP-L/336)", source=LLAVA15_SOURCE,
        checkpoint_name="llava-v1.5-7b", global_batch=256, deepspeed="zero2.json",
        model_name_or_path="lmsys/vicuna-7b-v1.5", conv_mode="plain", **pretrain_paths("llava-v1.5-7b"),
        vision_tower="openai/clip-vit-large-patch14-336", tune_mm_mlp_adapter=True, image_aspect_ratio="square",
        num_train_epochs=1, per_device_train_batch_size=32, save_steps=24000, learning_rate=1e-3,
        model_max_length=2048,
    ),
    Recipe(
        name="llava15", stage=2, title="LLaVA-1.5-7B (Vicuna-7B-v1.5 + CLIP-L/336)", source=LLAVA15_SOURCE,
        checkpoint_name="llava-v1.5-7b", global_batch=128, deepspeed="zero3.json",
        model_name_or_path="lmsys/vicuna-7b-v1.5", conv_mode="v1", **finetune_paths("llava-v1.5-7b"),
        vision_tower="openai/clip-vit-large-patch14-336", unfreeze_mm_vision_tower=False,
        group_by_modality_length=True, image_aspect_ratio="pad", num_train_epochs=1, per_device_train_batch_size=16,
        save_steps=50000, learning_rate=2e-5, model_max_length=2048,
    ),
)
LLAVA15_LORA_TITLE = "LLaVA-1.5-7B LoRA (Vicuna-7B-v1.5 + CLIP-L/336)"
LLAVA15_LORA = (renamed(LLAVA15[0], "llava15_lora", LLAVA15_LORA_TITLE),
                renamed(with_lora(LLAVA15[1]), "llava15_lora", LLAVA15_LORA_TITLE))

# ---------------------------------------------------------------- XTuner LLaVA-Phi-3-mini (seeds 000, 001, 002)

PHI3MINI_SOURCE = ("seeds 000/001 (XTuner LLaVA-Phi-3-mini): 256 (16/GPU x 2 x 8) x 1e-3 for 1 epoch with phi3_chat "
                   "prompts, then 128 (8/GPU x 2 x 8) x 2e-5 for 2 epochs, full LLM and full ViT, 4096 tokens; "
                   "XTuner launched stage 2 with ZeRO-2, mvlm's scripts with ZeRO-3; XTuner trained on ShareGPT4V-PT "
                   "and InternVL-SFT: point --data_path / --image_folder there")
PHI3MINI = (
    Recipe(
        name="phi3mini", stage=1, title="XTuner LLaVA-Phi-3-mini (Phi-3-mini-4k + CLIP-L/336)", source=PHI3MINI_SOURCE,
        checkpoint_name="llava-phi-3-mini", global_batch=256, deepspeed="zero2.json",
        model_name_or_path="microsoft/Phi-3-mini-4k-instruct", conv_mode="phi3_chat",
        **pretrain_paths("llava-phi-3-mini"), vision_tower="openai/clip-vit-large-patch14-336",
        tune_mm_mlp_adapter=True, image_aspect_ratio="square", num_train_epochs=1, per_device_train_batch_size=16,
        save_steps=24000, learning_rate=1e-3, model_max_length=4096,
    ),
    Recipe(
        name="phi3mini", stage=2, title="XTuner LLaVA-Phi-3-mini (Phi-3-mini-4k + CLIP-L/336)", source=PHI3MINI_SOURCE,
        checkpoint_name="llava-phi-3-mini", global_batch=128, deepspeed="zero3.json",
        model_name_or_path="microsoft/Phi-3-mini-4k-instruct", conv_mode="phi3_chat",
        **finetune_paths("llava-phi-3-mini"), vision_tower="openai/clip-vit-large-patch14-336",
        unfreeze_mm_vision_tower=True, group_by_modality_length=True, image_aspect_ratio="pad", num_train_epochs=2,
        per_device_train_batch_size=8, save_steps=50000, learning_rate=2e-5, model_max_length=4096,
    ),
)
PHI3MINI_QLORA_TITLE = "XTuner LLaVA-Phi-3-mini, QLoRA LLM + LoRA ViT (Phi-3-mini-4k + CLIP-L/336)"
PHI3MINI_QLORA_SOURCE = (
    "seed 002 (XTuner's recommended LLM-QLoRA / ViT-LoRA finetune, its llava_*_qlora_*_lora_e1_gpu8 configs) "
    "over LLaVA-Phi-3-mini's stage 1: 128 (16/GPU x 8) x 2e-4 for 1 epoch, 4-bit NF4 LLM with double "
    "quantization, LoRA r 512 / alpha 256 on the LLM, ZeRO-2. XTuner gives the ViT its own LoRA (r 64, alpha "
    "16); mvlm has one LoRA config, so the ViT's adapters take the LLM's r and alpha")
PHI3MINI_QLORA = (
    renamed(PHI3MINI[0], "phi3mini_qlora", PHI3MINI_QLORA_TITLE),
    dataclasses.replace(
        PHI3MINI[1], name="phi3mini_qlora", title=PHI3MINI_QLORA_TITLE, source=PHI3MINI_QLORA_SOURCE,
        deepspeed="zero2.json", unfreeze_mm_vision_tower=False, lora_vision_tower=True, num_train_epochs=1,
        per_device_train_batch_size=16, learning_rate=2e-4, lora_enable=True, lora_r=512, lora_alpha=256,
        lora_dropout=0.05, bits=4, quant_type="nf4", double_quant=True,
        output_dir=finetune_paths("llava-phi-3-mini", "-qlora")["output_dir"],
    ),
)

# ---------------------------------------------------------------- InternVL-Chat on LLaVA (seed 004)

INTERNVL_SOURCE = ("seed 004 (InternVL-Chat, scripts_internvl/*_internvit6b_448_vicuna7b.sh): LLaVA-1.5's recipe "
                   "with InternViT-6B-448px features from its 4th-last layer; 256 (32/GPU x 8) x 1e-3, then 128 "
                   "(16/GPU x 8) x 2e-5, 1 epoch each, max length 2048, the vision tower frozen")
INTERNVL_CHAT = (
    dataclasses.replace(
        LLAVA15[0], name="internvl_chat", title="InternVL-Chat (Vicuna-7B-v1.5 + InternViT-6B-448px)",
        source=INTERNVL_SOURCE, checkpoint_name="internvl-chat-vit-6b-448px-vicuna-7b",
        vision_tower="OpenGVLab/InternViT-6B-448px", mm_vision_select_layer=-4,
        **pretrain_paths("internvl-chat-vit-6b-448px-vicuna-7b"),
    ),
    dataclasses.replace(
        LLAVA15[1], name="internvl_chat", title="InternVL-Chat (Vicuna-7B-v1.5 + InternViT-6B-448px)",
        source=INTERNVL_SOURCE, checkpoint_name="internvl-chat-vit-6b-448px-vicuna-7b",
        vision_tower="OpenGVLab/InternViT-6B-448px", mm_vision_select_layer=-4,
        **finetune_paths("internvl-chat-vit-6b-448px-vicuna-7b"),
    ),
)

# ---------------------------------------------------------------- the registry

RECIPES: dict[str, tuple[Recipe, Recipe]] = {
    stages[0].name: stages
    for stages in (MIPHA_3B, MIPHA_2_4B, MIPHA_1_6B, LLAVA15, LLAVA15_LORA, PHI3MINI, PHI3MINI_QLORA, INTERNVL_CHAT)
}
DEFAULT_RECIPE = "mipha3b"
"""The scripts' recipe when RECIPE is unset."""


def recipe_names(mark_default: bool = False) -> str:
    """The known recipes, for messages: 'mipha3b, mipha2.4b, ...' ('mipha3b (default), ...' for the scripts)."""
    return ", ".join(f"{name} (default)" if mark_default and name == DEFAULT_RECIPE else name for name in RECIPES)


def get_recipe(name: str, stage: int | str) -> Recipe:
    """Recipe `name`'s stage 1 or 2; a FlagError naming the choices for anything else."""
    if name not in RECIPES:
        raise FlagError(f"unknown recipe {name!r}; choose one of: {recipe_names()}")
    if str(stage) not in ("1", "2"):
        choices = "; ".join(f"{key}: {meaning}" for key, meaning in STAGES.items())
        raise FlagError(f"--stage must be 1 or 2, got {str(stage)!r} ({choices})")
    return RECIPES[name][int(stage) - 1]
