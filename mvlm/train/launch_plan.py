"""What scripts/_launch.sh passes to `mvlm.train.train`: a recipe's flags for the processes it starts.

The scripts choose the launcher and count the processes (GPUs, NPROC, NNODES, HOSTFILE); the numbers
come from here, so they live in Python once (mvlm/train/recipes.py) and are tested there:

    python -m mvlm.train.launch_plan --script finetune.sh --recipe mipha3b --stage 2 [--variant lora|qlora]
        --processes 16 --processes-text 'NPROC=8 x NNODES=2' [--global-batch 128] [--output-suffix -x]
        -- ENVIRONMENT_FLAGS -- USER_FLAGS

ENVIRONMENT_FLAGS are the flags the script made of its environment variables (LEARNING_RATE=2e-3 ->
--learning_rate 2e-3), USER_FLAGS the script's arguments. It prints one shell-quoted line: the recipe's
DeepSpeed config (a file in scripts/), then the flags that go before the user's: the recipe's that neither
sets, the gradient accumulation that keeps the global batch, and the environment's flags (but none that
names a setting the user's flags also name two ways, such as a warm-up). The script appends the user's
flags unchanged, so they win. Errors are one `mvlm: ...` line in the scripts' words and exit status 2, as
every other setting the scripts refuse.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Sequence

from mvlm.errors import FlagError
from mvlm.train.global_batch import GlobalBatchError, positive_integer
from mvlm.train.recipe_flags import exclusive_with, flags_set, recipe_defaults, without_flags
from mvlm.train.recipes import DEFAULT_RECIPE, RECIPES, VARIANTS, Recipe, finetune_paths, get_recipe, recipe_names

SCRIPT_ERROR_EXIT_STATUS = 2
"""The scripts' status for a setting they refuse (argparse's for a usage error)."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    deepspeed: str
    """The recipe's DeepSpeed config, a file in scripts/."""
    flags: list[str]
    """What goes between the launcher's flags and the user's."""


def script_recipe(script: str, name: str, stage: int, variant: str | None, global_batch: str | None,
                  output_suffix: str | None) -> Recipe:
    """The recipe a script runs: RECIPE (default mipha3b) at its stage, with the script's LoRA variant,
    GLOBAL_BATCH and OUTPUT_SUFFIX applied."""
    name = name or DEFAULT_RECIPE
    if name not in RECIPES:
        raise FlagError(f"unknown RECIPE={name!r} for {script}; choose one of: {recipe_names(mark_default=True)} "
                        f"(e.g. RECIPE=llava15 bash scripts/{script} ...)")
    recipe = get_recipe(name, stage)
    if variant:
        recipe = VARIANTS[variant](recipe)
    if global_batch:
        recipe = dataclasses.replace(recipe, global_batch=positive_integer("GLOBAL_BATCH", global_batch))
    if output_suffix:
        output_dir = finetune_paths(recipe.checkpoint_name, output_suffix)["output_dir"]
        recipe = dataclasses.replace(recipe, output_dir=output_dir)
    return recipe


def launch_plan(recipe: Recipe, environment_flags: Sequence[str], user_flags: Sequence[str], processes: int,
                processes_text: str) -> LaunchPlan:
    """The flags before the user's, for `processes` processes in all (`processes_text`: how they were counted,
    e.g. 'NPROC=8 x NNODES=2', for the message when they do not divide the global batch)."""
    environment_flags = without_flags(environment_flags, exclusive_with(flags_set(user_flags)))
    try:
        defaults = recipe_defaults(recipe, [*environment_flags, *user_flags], processes)
    except GlobalBatchError as error:
        raise FlagError(
            f"GLOBAL_BATCH={error.global_batch} is not a multiple of the per-device batch {error.per_device_batch} "
            f"x {processes_text}; change GLOBAL_BATCH, PER_DEVICE_BATCH (or --per_device_train_batch_size) or the "
            f"number of processes, or pass --gradient_accumulation_steps yourself") from None
    return LaunchPlan(recipe.deepspeed, [*defaults, *environment_flags])


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The plan's own options, then the environment's flags and the user's, each group after a lone `--`."""
    parser = argparse.ArgumentParser(prog="python -m mvlm.train.launch_plan", allow_abbrev=False,
                                     description="The flags scripts/_launch.sh passes to mvlm.train.train.")
    parser.add_argument("--script", required=True, help="the script the user ran, for messages")
    parser.add_argument("--recipe", default="", help=f"RECIPE (empty: {DEFAULT_RECIPE})")
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="finetune_lora.sh's or finetune_qlora.sh's")
    parser.add_argument("--processes", required=True, help="training processes in all")
    parser.add_argument("--processes-text", required=True, help="how they were counted, e.g. 'NPROC=8 x NNODES=2'")
    parser.add_argument("--global-batch", help="GLOBAL_BATCH (empty: the recipe's)")
    parser.add_argument("--output-suffix", help="OUTPUT_SUFFIX: ./checkpoints/<model><suffix> (empty: the recipe's)")
    own, _, rest = _split(list(argv))
    environment, _, user = _split(rest)
    return parser.parse_args(own), environment, user


def _split(tokens: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" not in tokens:
        return tokens, "", []
    index = tokens.index("--")
    return tokens[:index], "--", tokens[index + 1:]


def main(argv: Sequence[str] | None = None) -> None:
    arguments, environment_flags, user_flags = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        recipe = script_recipe(arguments.script, arguments.recipe, arguments.stage, arguments.variant,
                               arguments.global_batch, arguments.output_suffix)
        processes = positive_integer("the number of processes", arguments.processes)
        plan = launch_plan(recipe, environment_flags, user_flags, processes, arguments.processes_text)
    except FlagError as error:
        print(f"mvlm: {error}", file=sys.stderr)
        raise SystemExit(SCRIPT_ERROR_EXIT_STATUS) from None
    print(shlex.join([plan.deepspeed, *plan.flags]))


if __name__ == "__main__":
    main()
