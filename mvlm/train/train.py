"""`python -m mvlm.train.train`: parse LLaVA's flags, build the model, apply the policy, run Trainer.

`--recipe NAME --stage 1|2` fills in a published recipe's flags (mvlm/train/recipe_flags.py) under the
user's own; `--print-recipe` prints the resolved command and stops. A user's mistake (an MvlmError: a flag,
the data, a missing file) stops with one `mvlm: ...` line and exit status 1; argparse's own usage errors
keep status 2; anything else is a bug in mvlm and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import transformers
from transformers.trainer_utils import get_last_checkpoint

from mvlm.data.dataset import BadSampleError, DataConfig, LazySupervisedDataset, SupervisedCollator
from mvlm.data.formats import DataFormatError, load_samples
from mvlm.errors import DataError, FlagError, MvlmError
from mvlm.model.projector_weights import find_projector_file
from mvlm.train.arguments import DataArguments, ModelArguments, TrainingArguments
from mvlm.train.distributed import freeze_unreachable_tower_parameters, init_deepspeed_comm, leave_process_group
from mvlm.train.model_setup import load_model_for_training
from mvlm.train.policy import apply_policy, policy_from_flags, policy_table
from mvlm.train.recipe_flags import format_command, resolve
from mvlm.train.trainer import MvlmTrainer

logger = logging.getLogger("mvlm.train")


def main(argv: list[str] | None = None) -> MvlmTrainer | None:
    """Run one training; returns the Trainer (its model is the trained one), or None after --print-recipe."""
    try:
        return _train(sys.argv[1:] if argv is None else list(argv))
    except MvlmError as error:  # the user's input, not our code: one line, exit status 1
        raise SystemExit(f"mvlm: {error}") from None


def _train(argv: list[str]) -> MvlmTrainer | None:
    request = resolve(argv)  # --recipe / --stage: the recipe's flags first, the user's after them
    if request.print_only:
        print(format_command(request.recipe, request.argv, request.processes), end="")
        return None
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=request.argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    policy = policy_from_flags(
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
        freeze_backbone=model_args.freeze_backbone,
        freeze_mm_mlp_adapter=training_args.freeze_mm_mlp_adapter,
        unfreeze_mm_vision_tower=model_args.unfreeze_mm_vision_tower,
        lora_enable=training_args.lora_enable,
        lora_vision_tower=model_args.lora_vision_tower,
        mm_projector_lr=training_args.mm_projector_lr,
        mm_vision_tower_lr=model_args.mm_vision_tower_lr,
    )
    try:  # before the model is built: a wrong path fails in seconds, with one line, not minutes in
        samples = load_samples(data_args.data_path)
        if model_args.pretrain_mm_mlp_adapter:
            find_projector_file(model_args.pretrain_mm_mlp_adapter)
    except DataFormatError as error:  # a ValueError until mvlm.data's errors derive from mvlm.errors.DataError
        raise DataError(str(error)) from error
    except FileNotFoundError as error:  # --pretrain_mm_mlp_adapter names no projector file
        raise FlagError(str(error)) from error
    transformers.set_seed(training_args.seed)  # the fresh projector and adapters are then the same in every run
    init_deepspeed_comm(training_args)  # before building: ZeRO-3 partitions the weights as they load
    model, tokenizer, image_processor = load_model_for_training(model_args, data_args, training_args, policy)
    apply_policy(model, policy)
    freeze_unreachable_tower_parameters(model)  # else DDP fails when the tower trains
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    logger.info("training policy:\n%s", policy_table(model, policy, training_args.learning_rate))

    dataset = LazySupervisedDataset(
        samples,
        tokenizer,
        image_processor,
        DataConfig(
            conv_mode=model_args.conv_mode,
            num_image_tokens=model.num_image_tokens,
            image_folder=data_args.image_folder,
            image_aspect_ratio=data_args.image_aspect_ratio,
            image_grid_pinpoints=data_args.image_grid_pinpoints,
            max_length=training_args.model_max_length,
            skip_bad_samples=data_args.skip_bad_samples,
        ),
    )
    trainer = MvlmTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=SupervisedCollator(tokenizer.pad_token_id, packing=data_args.packing),
        processing_class=tokenizer,
        policy=policy,
        image_processor=image_processor,
    )
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir):
        resume = get_last_checkpoint(training_args.output_dir)  # auto-resume, as LLaVA's train.py does
    try:
        trainer.train(resume_from_checkpoint=resume)
    except BadSampleError as error:
        sys.exit("mvlm: training stopped on a bad sample.\n" + _report(error))
    if data_args.skip_bad_samples:
        logger.info("skipped %d bad sample(s) during training", trainer.skipped_samples)
    trainer.save_state()
    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    leave_process_group()
    return trainer


def _report(error: BaseException) -> str:
    """Our own lines of the error, without the traceback a DataLoader worker wraps around them.

    From a worker, the first line comes back as the traceback's last line, "...BadSampleError: bad sample ...".
    """
    ours = ("bad sample", "every sample", "Check the whole dataset", "or pass --skip_bad_samples")
    lines = (line.split("BadSampleError: ", 1)[-1] for line in str(error).splitlines())
    return "\n".join(line for line in lines if line.startswith(ours))


if __name__ == "__main__":
    main()
