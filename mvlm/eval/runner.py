"""What every benchmark runner shares: LLaVA's flags, chunks, a resumable answers file, batched answering.

A runner turns its benchmark's question file into `Question`s (one group per source row, so that
`--num-chunks/--chunk-idx` split rows exactly as LLaVA does) and hands them to `run_questions`, which
answers them in order and appends each answer to the answers file as soon as its batch is done. A killed
run therefore resumes where it stopped: answers already in the file are skipped, and a half-written last
line is dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import uuid
from collections import Counter
from typing import Any, Callable, Hashable, Sequence

from tqdm import tqdm

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.data.images import ImageError, load_image
from mvlm.jsonl import read_json_objects
from mvlm.errors import MvlmError
from mvlm.inference import (
    check_device,
    default_device,
    encode_prompt,
    generate_answers,
    generation_config,
    load_for_inference,
    new_conversation,
)

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
"""LLaVA's `--single-pred-prompt` instruction, appended on a new line after the question."""


class RunnerError(MvlmError):
    """A problem with the inputs that the user can fix; reported as one line, without a traceback."""


@dataclasses.dataclass
class Question:
    """One generation: what the model is asked, and the answer record it becomes."""

    record: dict[str, Any]
    """The answer's fields in LLaVA's key order, with "text" (the answer) left None to be filled in."""
    message: str
    """The user turn sent to the model, without the `<image>` tag (the runner adds it when there is an image)."""
    image: str | bytes | None = None
    """An image path (checked before the model loads), image bytes (e.g. MMBench's base64), or None."""


def add_runner_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """LLaVA's runner flags (both its dash and underscore spellings work), plus --batch-size and --device."""
    parser.add_argument("--model-path", "--model_path", required=True)
    parser.add_argument("--model-base", "--model_base", default=None,
                        help="the LLM a projector-only (stage-1) or LoRA checkpoint was trained on")
    parser.add_argument("--image-folder", "--image_folder", default="", help="where relative image paths start")
    parser.add_argument("--question-file", "--question_file", required=True)
    parser.add_argument("--answers-file", "--answers_file", required=True,
                        help="answers jsonl; an existing file is resumed (its answered questions are skipped)")
    parser.add_argument("--conv-mode", "--conv_mode", default=None,
                        help="chat template; default: the one stored in the checkpoint (conv_mode in config.json)")
    parser.add_argument("--num-chunks", "--num_chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", "--chunk_idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (the default) decodes greedily; LLaVA's scripts pass 0 too")
    parser.add_argument("--top_p", "--top-p", type=float, default=None)
    parser.add_argument("--num_beams", "--num-beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=1,
                        help="questions per generate call, left-padded: the answers are batch size 1's, except "
                        "where two tokens tie within floating-point rounding")
    parser.add_argument("--single-pred-prompt", "--single_pred_prompt", action="store_true",
                        help=f"append {SINGLE_PRED_PROMPT!r} to each question")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: cuda if available, else cpu)")


def split_list(items: Sequence[Any], num_chunks: int) -> list[Sequence[Any]]:
    """LLaVA's split: contiguous chunks of ceil(len / num_chunks) items (so there may be fewer chunks)."""
    size = math.ceil(len(items) / num_chunks)
    return [items[start : start + size] for start in range(0, len(items), size)] if size else []


def get_chunk(items: Sequence[Any], num_chunks: int, chunk_idx: int) -> Sequence[Any]:
    """Chunk `chunk_idx` of `num_chunks`; empty when the items run out before it (LLaVA would crash)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise RunnerError(f"--chunk-idx must be in [0, --num-chunks) and --num-chunks >= 1; "
                          f"got --num-chunks {num_chunks} --chunk-idx {chunk_idx}")
    chunks = split_list(items, num_chunks)
    return chunks[chunk_idx] if chunk_idx < len(chunks) else items[:0]


def model_id_from_path(model_path: str) -> str:
    """LLaVA's model name: the folder's name, or `parent_checkpoint-N` for a Trainer checkpoint folder."""
    parts = os.path.normpath(os.path.expanduser(model_path)).split(os.sep)
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


SHORT_UUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def short_uuid() -> str:
    """A random 22-character id in the look of LLaVA's `answer_id` (a uuid4 in a 57-letter alphabet)."""
    number, letters = uuid.uuid4().int, []
    for _ in range(22):
        number, digit = divmod(number, len(SHORT_UUID_ALPHABET))
        letters.append(SHORT_UUID_ALPHABET[digit])
    return "".join(letters)


def resume_keys(records: Sequence[dict[str, Any]]) -> list[Hashable]:
    """A key per record: (question_id, round_id, how many earlier records had both).

    question ids are not unique in every benchmark (LLaVA's MME file asks two questions per image under
    one id), so the n-th answer with an id belongs to the n-th question with it.
    """
    seen: Counter = Counter()
    keys = []
    for record in records:
        identity = (json.dumps(record.get("question_id"), sort_keys=True), json.dumps(record.get("round_id")))
        keys.append((*identity, seen[identity]))
        seen[identity] += 1
    return keys


class AnswersFile:
    """An answers jsonl that is only ever appended to; what an earlier run left in it is read first.

    A last line without its newline is what a killed run leaves: it is cut off (it never was a whole
    answer). A broken line anywhere else is the user's data and stops the run with its line number.
    """

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.dropped_partial_line = False
        if os.path.exists(path):
            self._read()

    def _read(self) -> None:
        with open(self.path, "rb") as handle:
            data = handle.read()
        complete_end = data.rfind(b"\n") + 1
        tail = data[complete_end:]
        if tail.strip():
            try:
                json.loads(tail)
                complete_end = len(data)  # a whole answer that only lacks its newline
            except ValueError:
                self.dropped_partial_line = True
        for number, line in enumerate(data[:complete_end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise RunnerError(
                    f"{self.path}:{number} is not valid JSON ({error}); fix or remove that line"
                ) from error
            if not isinstance(record, dict) or "question_id" not in record:
                raise RunnerError(f"{self.path}:{number} is not an answer record (no question_id)")
            self.records.append(record)
        if complete_end < len(data) or (data and not data.endswith(b"\n")):
            with open(self.path, "r+b") as handle:
                handle.truncate(complete_end)
                if complete_end and not data[:complete_end].endswith(b"\n"):
                    handle.seek(0, os.SEEK_END)
                    handle.write(b"\n")

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write answers and flush them, so that they survive if the run is killed right after."""
        with open(self.path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()


def remaining_questions(questions: Sequence[Question], answers: AnswersFile, model_id: str) -> list[Question]:
    """The questions the answers file does not answer yet; refuses a file written by another model or prompt."""
    other_models = {record.get("model_id") for record in answers.records} - {model_id}
    if other_models:
        raise RunnerError(
            f"{answers.path} holds answers of model {sorted(map(str, other_models))[0]!r}, not of {model_id!r}; "
            "write to a new --answers-file (or delete this one) to start over"
        )
    question_keys = resume_keys([question.record for question in questions])
    by_key = dict(zip(question_keys, questions))
    answered = set()
    for key, record in zip(resume_keys(answers.records), answers.records):
        question = by_key.get(key)
        if question is None:
            continue
        if record.get("prompt") != question.record.get("prompt"):
            raise RunnerError(
                f"{answers.path} answers question {record['question_id']!r} with a different prompt than this run "
                "asks (another question file or --single-pred-prompt/--lang/--all-rounds setting?); write to a new "
                "--answers-file"
            )
        answered.add(key)
    foreign = len(answers.records) - len(answered)
    if foreign:
        print(f"note: {answers.path} holds {foreign} answer(s) to questions not in this run; they are kept",
              file=sys.stderr)
    return [question for key, question in zip(question_keys, questions) if key not in answered]


def check_answers_are_newer_than_checkpoint(answers: AnswersFile, model_paths: Sequence[str | None]) -> None:
    """Refuse to resume answers written before the checkpoint last changed (a retrained model, same folder).

    LLaVA's scripts name answers files after the checkpoint folder, so a rerun after retraining would
    otherwise silently keep the old model's answers.
    """
    if not answers.records:
        return
    written = os.path.getmtime(answers.path)
    for folder in filter(None, model_paths):
        folder = os.path.expanduser(folder)
        if not os.path.isdir(folder):
            continue
        changed = max((entry.stat().st_mtime for entry in os.scandir(folder) if entry.is_file()), default=0.0)
        if changed > written:
            raise RunnerError(
                f"{answers.path} was written before the checkpoint {folder} last changed, so its answers may be "
                "another model's; write to a new --answers-file (or delete this one) to start over"
            )


def check_images(questions: Sequence[Question]) -> None:
    """Every image path exists, checked before the model loads (not hours into the run)."""
    missing = [q for q in questions if isinstance(q.image, str) and not os.path.isfile(q.image)]
    if missing:
        first = missing[0]
        raise RunnerError(
            f"{len(missing)} image file(s) missing, e.g. {first.image} (question {first.record['question_id']!r}); "
            "check --image-folder"
        )


def run_questions(questions: Sequence[Question], args: argparse.Namespace) -> None:
    """Answer `questions` in order, batch by batch, appending to `args.answers_file` as it goes."""
    if args.batch_size < 1:
        raise RunnerError(f"--batch-size must be >= 1, got {args.batch_size}")
    model_id = model_id_from_path(args.model_path)
    answers_file = os.path.expanduser(args.answers_file)
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
    answers = AnswersFile(answers_file)
    open(answers_file, "a", encoding="utf-8").close()  # an empty chunk still leaves its (empty) file to merge
    if answers.dropped_partial_line:
        print(f"note: dropped the half-written last line of {answers_file} (left by a killed run)", file=sys.stderr)
    check_answers_are_newer_than_checkpoint(answers, [args.model_path, args.model_base])
    todo = remaining_questions(questions, answers, model_id)
    check_images(todo)
    if len(todo) < len(questions):
        print(f"resuming: {len(questions) - len(todo)} of {len(questions)} question(s) already answered in "
              f"{answers_file}", file=sys.stderr)
    if not todo:
        return
    device = check_device(args.device or default_device())
    loaded = load_for_inference(args.model_path, args.model_base, device=device, conv_mode=args.conv_mode)
    tokenizer, model, image_processor, conv_mode = loaded.tokenizer, loaded.model, loaded.image_processor, loaded.conv_mode
    stop_str = new_conversation(conv_mode, tokenizer).stop_str
    config = generation_config(model, tokenizer, args.temperature, args.top_p, args.num_beams,
                               args.max_new_tokens, stop_str)

    def encode(question: Question):
        conversation = new_conversation(conv_mode, tokenizer)
        images = []
        message = question.message
        if question.image is not None:
            try:
                images = [load_image(question.image)]
            except ImageError as error:
                raise RunnerError(f"question {question.record['question_id']!r}: {error}") from error
            message = f"{DEFAULT_IMAGE_TOKEN}\n{message}"
        conversation.append_message(conversation.roles[0], message)
        return encode_prompt(conversation, images, tokenizer, image_processor, model)

    with tqdm(total=len(questions), initial=len(questions) - len(todo), desc=os.path.basename(answers_file),
              unit="q", dynamic_ncols=True) as progress:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            generated = generate_answers(model, tokenizer, [encode(question) for question in batch], config)
            answers.append([answer_record(question, output.text, model_id)
                            for question, output in zip(batch, generated)])
            progress.update(len(batch))


def answer_record(question: Question, text: str, model_id: str) -> dict[str, Any]:
    """LLaVA's answer line: the question's fields with the answer, then answer_id, model_id, metadata."""
    record = dict(question.record)
    record["text"] = text
    record.update(answer_id=short_uuid(), model_id=model_id, metadata={})
    return record


def without_image_tags(text: str) -> str:
    return text.replace(DEFAULT_IMAGE_TOKEN, "")


def runner_main(
    parser: argparse.ArgumentParser,
    read_questions: Callable[[argparse.Namespace], list[list[Question]]],
    argv: list[str] | None = None,
) -> int:
    """Parse, read the question groups (one per source row), take this chunk, answer; errors as one line."""
    args = parser.parse_args(argv)
    try:
        groups = get_chunk(read_questions(args), args.num_chunks, args.chunk_idx)
        run_questions([question for group in groups for question in group], args)
    except MvlmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def read_json_lines(path: str) -> list[dict[str, Any]]:
    """A jsonl file as dicts; a broken line is an error that names it."""
    if not os.path.isfile(path):
        raise RunnerError(f"question file {path} does not exist")

    def bad_line(number: int, decode_error: ValueError | None) -> RunnerError:
        if decode_error is not None:
            return RunnerError(f"{path}:{number} is not valid JSON ({decode_error})")
        return RunnerError(f"{path}:{number} is not a JSON object")

    return read_json_objects(path, bad_line)[0]
