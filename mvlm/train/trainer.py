"""The Trainer subclass: only what `transformers.Trainer` lacks for LLaVA-style training.

- the modality-grouped length sampler (`--group_by_modality_length`);
- optimizer groups from the training policy (per-part learning rates, no decay on biases and norms);
- what a checkpoint holds: stage 1 the projector alone (`mm_projector.safetensors`), LoRA runs the
  adapters and the non-LoRA trainables, otherwise a full mvlm checkpoint; and resuming from each;
- the count of skipped bad samples (`--skip_bad_samples`), reported at the end.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from mvlm.data.dataset import SKIPPED_KEY
from mvlm.model.lora import resume_lora, save_lora
from mvlm.model.projector_weights import load_projector_weights, projector_state_dict, save_projector
from mvlm.train.distributed import projector_for_saving
from mvlm.train.policy import TrainingPolicy, parameter_groups
from mvlm.train.sampler import ModalityLengthGroupedSampler


class MvlmTrainer(Trainer):
    def __init__(self, *args: Any, policy: TrainingPolicy, image_processor: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.image_processor = image_processor
        self.skipped_sample_indices: set[int] = set()

    @property
    def skipped_samples(self) -> int:
        """Distinct bad samples skipped so far (`--skip_bad_samples`); a sample met twice counts once."""
        return len(self.skipped_sample_indices)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_modality_length:
            batch_size = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
            return ModalityLengthGroupedSampler(dataset.modality_lengths, batch_size, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = parameter_groups(
                model, self.policy, self.args.learning_rate, self.args.weight_decay, self.get_decay_parameter_names(model)
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)  # each group has its own
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, *args, **kwargs):
        skipped = inputs.pop(SKIPPED_KEY, None)
        if skipped is not None:
            self.skipped_sample_indices.update(skipped.tolist())
        return super().training_step(model, inputs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Stage 1: the projector alone; LoRA: adapters + non-LoRA trainables; else a full checkpoint.

        Every kind also gets the config, tokenizer and image processor, so each `checkpoint-N/` loads
        on its own (over its base for projector and LoRA folders).
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not (self.policy.projector_only or self.policy.uses_lora):
            super()._save(output_dir, state_dict=state_dict)
            if self.args.should_save:
                self.image_processor.save_pretrained(output_dir)
            return
        if self.policy.projector_only:  # ZeRO-3: gathered on every rank, so before the rank check
            state_dict = projector_for_saving(self.accelerator.unwrap_model(self.model), state_dict)
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        if self.policy.uses_lora:
            save_lora(model, output_dir, state_dict)
        else:
            save_projector(state_dict if state_dict is not None else projector_state_dict(model), output_dir)
        model.config.save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)
        self.image_processor.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not (self.policy.projector_only or self.policy.uses_lora):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.policy.uses_lora:
            resume_lora(model, resume_from_checkpoint)
        else:
            load_projector_weights(model, resume_from_checkpoint)
