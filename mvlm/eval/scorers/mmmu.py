"""MMMU: college-level multiple-choice and open questions; accuracy with MMMU's answer parsing.

Follows MMMU's `eval/eval_utils.py` (parse_multi_choice_response / parse_open_response /
eval_multi_choice / eval_open), reimplemented from its behaviour:
- multiple-choice: strip `, . ! ? ; : '` from both ends, pad with spaces; candidates are the letters
  written as "(X)"; else as " X "; else, for answers of more than 5 words, the options whose text
  occurs in the answer (case-insensitive). Several candidates: the one written last wins. None: a
  random letter, from a generator seeded with 42 (MMMU seeds `random` with 42 at import), drawn in
  question-file order. Right when the letter equals the answer (or one of a list of answers).
- open: the answer is lowercased, cut into sentences, and from each the shortest tail after
  "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result " (and "=" in the
  last) is kept; the numbers in them are extracted; numbers become floats rounded to 2 decimals,
  other strings stay lowercased (one-character strings padded with a space). Right when a float
  equals a (normalised) gold answer, or a gold string occurs inside a predicted string.
"""

from __future__ import annotations

import argparse
import ast
import random
import re
from typing import Any

from mvlm.eval.scorers.common import (
    ScoreError,
    answers_by_id,
    id_key,
    read_answers,
    read_questions,
    require_all_answered,
    require_field,
)

NAME = "mmmu"
HELP = "MMMU: accuracy with MMMU's multiple-choice and open answer parsing"
DESCRIPTION = (
    __doc__
    + """
mvlm differs where the official evaluation scores silently what it should not: questions without an
answer are an error (MMMU averages over the answered ones only). `options` and a list-valued `answer`
may also be given as their string form ("['a', 'b']"), as the MMMU dataset stores them.

--question-file is a jsonl with, per question, MMMU's `id`, `question`, `options` (list), `answer`,
`question_type` (multiple-choice | open) and LLaVA's `question_id`, `text`, `image`.
"""
)

RANDOM_SEED = 42
STRIPPED_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")
KEY_PHRASES = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
TRIVIAL_TAILS = (":", ",", ".", "!", "?", ";", "'")
NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
SENTENCE_BREAK = re.compile(r"\.\s(?=[A-Z])|\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question-file", required=True, help="MMMU questions jsonl (see the description)")


def parse_choice(response: str, options: list[str], rng: random.Random) -> str:
    """The option letter MMMU reads from a multiple-choice response (random when it finds none)."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    for mark in STRIPPED_PUNCTUATION:
        response = response.strip(mark)
    response = f" {response} "
    candidates = [letter for letter in letters if f"({letter})" in response]
    position_of = {letter: response.rfind(f"({letter})") for letter in candidates}
    if not candidates:
        candidates = [letter for letter in letters if f" {letter} " in response]
        position_of = {letter: response.rfind(f" {letter} ") for letter in candidates}
    if not candidates and len(response.split()) > 5:
        lowered = response.lower()
        candidates = [letter for letter, option in zip(letters, options) if option.lower() in lowered]
        position_of = {letter: lowered.rfind(options[letters.index(letter)].lower()) for letter in candidates}
    if not candidates:
        return rng.choice(letters)
    return max(candidates, key=lambda letter: (position_of[letter], -candidates.index(letter)))


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_value(text: str) -> list[str | float]:
    """A number as its float rounded to 2 decimals; other text lowercased (1 character: ' x' and 'x ')."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    return NUMBER_WITH_COMMAS.findall(text) + NUMBER_SCIENTIFIC.findall(text) + NUMBER_SIMPLE.findall(text)


def _key_tails(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    sentences = SENTENCE_BREAK.split(response)
    tails = []
    for index, sentence in enumerate(sentences):
        phrases = KEY_PHRASES + (("=",) if index == len(sentences) - 1 else ())
        shortest = None
        for phrase in phrases:
            if phrase in sentence:
                tail = sentence.split(phrase)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in TRIVIAL_TAILS:
            tails.append(shortest)
    return tails or [response]


def parse_open(response: str) -> list[str | float]:
    """MMMU's candidate values of an open response (strings and floats, deduplicated)."""
    tails = _key_tails(response)
    values = tails + [number for tail in tails for number in extract_numbers(tail)]
    return list({normalized: None for value in values for normalized in normalize_value(value)})


def open_is_right(gold: str | list[str], predicted: list[str | float]) -> bool:
    golds = [value for answer in (gold if isinstance(gold, list) else [gold]) for value in normalize_value(str(answer))]
    for value in predicted:
        if isinstance(value, str):
            if any(isinstance(g, str) and g in value for g in golds):
                return True
        elif value in golds:
            return True
    return False


def _as_list(value: Any, where: str) -> Any:
    """A list written as its Python string form (how the MMMU dataset stores options) becomes the list."""
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ScoreError(f"{where}: {value[:60]!r} looks like a list but does not parse") from None
        if isinstance(parsed, list):
            return parsed
    return value


def score(answers: list[dict[str, Any]], question_file: str) -> dict[str, Any]:
    """{accuracy (fraction), samples}."""
    questions = read_questions(question_file)
    by_id = answers_by_id(answers)
    require_all_answered([id_key(q["question_id"]) for q in questions], by_id, question_file)
    if not questions:
        raise ScoreError(f"question file {question_file} is empty")
    rng = random.Random(RANDOM_SEED)
    correct = 0
    for question in questions:
        where = f"{question_file} question {question['question_id']}"
        response = str(by_id[id_key(question["question_id"])]["text"])
        gold = _as_list(require_field(question, "answer", where), where)
        kind = require_field(question, "question_type", where)
        if kind == "multiple-choice":
            options = _as_list(require_field(question, "options", where), where)
            if not isinstance(options, list) or not options:
                raise ScoreError(f"{where}: a multiple-choice question needs a non-empty 'options' list")
            letter = parse_choice(response, [str(option) for option in options], rng)
            correct += letter in gold if isinstance(gold, list) else letter == gold
        elif kind == "open":
            correct += open_is_right(gold, parse_open(response))
        else:
            raise ScoreError(f"{where}: question_type {kind!r} is neither 'multiple-choice' nor 'open'")
    return {"accuracy": correct / len(questions), "samples": len(questions)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.question_file)
    print(f"Samples: {results['samples']}\nAccuracy: {results['accuracy']:.4f}")
    return results
