"""`--recipe NAME --stage 1|2` on the command line: a recipe's flags become defaults under the user's own.

`python -m mvlm.train.train` reads these options before transformers.HfArgumentParser sees the rest:
`--recipe NAME`, `--stage 1|2`, `--print-recipe` (print the resolved command and stop) and
`--global_batch_size N` (the recipe's global batch, replaced). The recipe's flags that the command line
does not set go first, the user's flags after them unchanged, so a user's flag always wins and every flag
is given once. The gradient accumulation keeps the recipe's global batch for the per-device batch in force
and the process count (WORLD_SIZE, which torchrun and DeepSpeed's launcher set; 1 without a launcher),
unless the user passes --gradient_accumulation_steps.

No torch or transformers here: the scripts resolve recipes through this module before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import textwrap
from typing import Sequence

from mvlm.errors import FlagError
from mvlm.train.global_batch import gradient_accumulation_steps, positive_integer
from mvlm.train.recipes import STAGES, Recipe, get_recipe, recipe_names

RECIPE_OPTIONS = ("recipe", "stage", "global_batch_size")
PRINT_OPTION = "print-recipe"
EXCLUSIVE_FLAGS = (frozenset({"warmup_ratio", "warmup_steps"}),)
"""Flags that name one setting two ways: setting one replaces the recipe's other (the trainer refuses both)."""
STAGE_SCRIPTS = {1: "scripts/pretrain.sh", 2: "scripts/finetune.sh"}


@dataclasses.dataclass(frozen=True)
class RecipeRequest:
    """What the recipe options asked for: the recipe (None without --recipe), whether to print and stop,
    and the command line: without the recipe options, then (`resolve`) with the recipe's flags before it."""

    recipe: Recipe | None
    print_only: bool
    argv: list[str]
    processes: int = 1
    """The training processes the gradient accumulation was computed for."""


# ---------------------------------------------------------------- reading a command line's flags


def flag_name(token: str) -> str | None:
    """'--name' or '--name=value' -> 'name'; None for a value ('x', '-2')."""
    return token[2:].split("=", 1)[0] if token.startswith("--") and len(token) > 2 else None


def flag_groups(argv: Sequence[str]) -> list[list[str]]:
    """The command line cut before each flag: [['--a', '1'], ['--b=2'], ['--c', 'x', 'y'], ['--d']]."""
    groups: list[list[str]] = []
    for token in argv:
        if flag_name(token) is not None or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def flags_set(argv: Sequence[str]) -> set[str]:
    """The names of the flags a command line sets."""
    return {name for name in map(flag_name, argv) if name is not None}


def last_value(argv: Sequence[str], name: str) -> str | None:
    """The last value given to --name ('--name v' or '--name=v'), as argparse keeps it; None if not given."""
    value = None
    for group in flag_groups(argv):
        if flag_name(group[0]) != name:
            continue
        if "=" in group[0]:
            value = group[0].split("=", 1)[1]
        elif len(group) > 1:
            value = group[-1]
    return value


def exclusive_with(names: set[str]) -> set[str]:
    """Every spelling of the settings among `names` that have two (EXCLUSIVE_FLAGS), `names`' own included."""
    return {flag for group in EXCLUSIVE_FLAGS if group & names for flag in group}


def replaced_flags(names: set[str]) -> set[str]:
    """The flags that a command line setting `names` replaces: those, and the other spellings of the same settings."""
    return set(names) | exclusive_with(names)


def without_flags(argv: Sequence[str], names: set[str]) -> list[str]:
    """The command line without the flags in `names` and their values."""
    return [token for group in flag_groups(argv) if flag_name(group[0]) not in names for token in group]


# ---------------------------------------------------------------- the recipe options


def parse_recipe_request(argv: Sequence[str]) -> RecipeRequest:
    """Take the recipe options out of `argv`; a FlagError for a stage, print or batch without a recipe,
    a recipe without a stage, or an unknown recipe or stage."""
    options: dict[str, str] = {}
    rest: list[str] = []
    print_only = False
    for group in flag_groups(argv):
        name = flag_name(group[0])
        if name == PRINT_OPTION:
            if len(group) > 1 or "=" in group[0]:
                raise FlagError(f"--{PRINT_OPTION} takes no value; it prints the resolved command and stops")
            print_only = True
        elif name in RECIPE_OPTIONS:
            values = [group[0].split("=", 1)[1], *group[1:]] if "=" in group[0] else group[1:]
            if len(values) != 1:
                raise FlagError(f"--{name} takes one value, got {shlex.join(values) or 'none'}")
            options[name] = values[0]
        else:
            rest += group
    if "recipe" not in options:
        orphans = [f"--{name}" for name in options] + ([f"--{PRINT_OPTION}"] if print_only else [])
        if orphans:
            verb = "needs" if len(orphans) == 1 else "need"
            raise FlagError(f"{' and '.join(orphans)} {verb} --recipe NAME, one of: {recipe_names()}")
        return RecipeRequest(None, False, rest)
    if "stage" not in options:
        stages = "; ".join(f"{number}: {meaning}" for number, meaning in STAGES.items())
        raise FlagError(f"--recipe {options['recipe']} needs --stage 1 or 2 ({stages})")
    recipe = get_recipe(options["recipe"], options["stage"])
    if "global_batch_size" in options:
        recipe = dataclasses.replace(
            recipe, global_batch=positive_integer("--global_batch_size", options["global_batch_size"]))
    return RecipeRequest(recipe, print_only, rest)


def processes_from_environment() -> int:
    """Training processes in all: WORLD_SIZE, as torchrun and DeepSpeed's launcher set it; 1 without one."""
    return positive_integer("WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))


def recipe_defaults(recipe: Recipe, argv: Sequence[str], processes: int) -> list[str]:
    """The recipe's flags that `argv` leaves unset, plus the gradient accumulation that keeps its global batch
    on `processes` processes with the per-device batch in force (argv's, else the recipe's)."""
    explicit = replaced_flags(flags_set(argv))
    tokens: list[str] = []
    for flag, value in recipe.flags():
        if flag not in explicit:
            tokens += [f"--{flag}", value]
        if flag == "per_device_train_batch_size" and "gradient_accumulation_steps" not in explicit:
            per_device = positive_integer(f"--{flag}", last_value(argv, flag) or value)
            steps = gradient_accumulation_steps(recipe.global_batch, per_device, processes)
            tokens += ["--gradient_accumulation_steps", str(steps)]
    return tokens


def resolve(argv: Sequence[str], processes: int | None = None) -> RecipeRequest:
    """The command line HfArgumentParser reads: the recipe's defaults, then the user's flags."""
    request = parse_recipe_request(argv)
    if request.recipe is None:
        return request
    processes = processes_from_environment() if processes is None else processes
    defaults = recipe_defaults(request.recipe, request.argv, processes)
    return dataclasses.replace(request, argv=defaults + request.argv, processes=processes)


def format_command(recipe: Recipe, argv: Sequence[str], processes: int) -> str:
    """The resolved command as a user copies it: comments on where it comes from, then one flag a line."""
    notes = [
        f"{recipe.name} stage {recipe.stage} ({STAGES[recipe.stage]}): {recipe.title}.",
        f"Source: {recipe.source}.",
        f"Global batch {recipe.global_batch} = per-device batch x {processes} process(es) (WORLD_SIZE) x gradient "
        f"accumulation. On GPUs, `RECIPE={recipe.name} bash {STAGE_SCRIPTS[recipe.stage]}` adds --deepspeed "
        f"scripts/{recipe.deepspeed} --bf16 True --tf32 True.",
    ]
    comments = [line for note in notes for line in textwrap.wrap(note, 110, initial_indent="# ",
                                                                   subsequent_indent="#   ", break_on_hyphens=False)]
    command = ["python -m mvlm.train.train", *("    " + shlex.join(group) for group in flag_groups(argv))]
    return "\n".join(comments) + "\n" + " \\\n".join(command) + "\n"
