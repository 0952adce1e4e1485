"""Score a runner's answers the way each benchmark's official (or LLaVA's) script does.

    python -m mvlm.eval.score BENCHMARK --answers A.jsonl [A2.jsonl ...] [benchmark files...] [--json OUT]

`--answers` takes one file or all `--num-chunks` parts (concatenated in the order given, replacing
LLaVA's merge step). `--json OUT` writes every printed metric. Question ids are compared as strings
(42 and "42" match; the official scripts would silently count such answers as missing).
`python -m mvlm.eval.score BENCHMARK -h` lists a benchmark's files and says where mvlm deliberately
differs from the official script.

Units, printed and in --json. Percent: TextVQA, GQA, ScienceQA, MMBench and SEED-Bench. Fractions
(0-1): POPE, MME's acc and acc+ (its scores are points, up to 200 a task), MMMU and exact (which
prints them as percent). VQAv2 and VizWiz only write the EvalAI upload file; EvalAI scores it.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any, Sequence

from mvlm.eval.scorers import exact, gqa, mmbench, mme, mmmu, pope, scienceqa, seed, textvqa, vizwiz, vqav2
from mvlm.errors import USER_ERROR_EXIT_STATUS, MvlmError
from mvlm.eval.scorers.common import write_json

SCORERS: dict[str, ModuleType] = {
    module.NAME: module for module in (vqav2, vizwiz, textvqa, gqa, scienceqa, pope, mme, mmbench, seed, mmmu, exact)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mvlm.eval.score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in SCORERS.items():
        sub = benchmarks.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(
            "--answers",
            nargs="+",
            required=True,
            metavar="A.jsonl",
            help="answers jsonl of the runner; several files (e.g. chunks) are concatenated in order",
        )
        module.add_arguments(sub)
        sub.add_argument("--json", metavar="OUT", help="also write every printed metric to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, score, print; returns the metrics (what --json writes). Bad input exits 1 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        metrics = SCORERS[args.benchmark].run(args)
        if args.json:
            write_json(args.json, metrics)
    except MvlmError as error:
        print(f"mvlm.eval.score {args.benchmark}: error: {error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None
    return metrics


if __name__ == "__main__":
    main()
