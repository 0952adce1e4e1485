"""Training-run helpers shared by the training tests: the common flags, and the weights a run starts from."""

from __future__ import annotations

import transformers

from mvlm.model.builder import build_model

LORA = ("--version", "vicuna_v1", "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
        "--learning_rate", "1e-2", "--mm_projector_lr", "1e-3")


def common_flags(checkpoints, data_path, image_folder, output_dir, *extra):
    return [
        "--model_name_or_path", checkpoints("llm", "llama"),
        "--vision_tower", checkpoints("tower", "clip"),
        "--data_path", data_path,
        "--image_folder", image_folder,
        "--output_dir", output_dir,
        "--per_device_train_batch_size", "4",
        "--report_to", "none",
        "--logging_steps", "1",
        "--save_strategy", "steps",
        "--dataloader_num_workers", "0",
        "--use_cpu", "True",
        *extra,
    ]


def initial_state(checkpoints, **kwargs):
    transformers.set_seed(42)  # as main() does with the default --seed
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"), **kwargs)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}
