"""What a well-formed LLaVA sample is: the one set of structural rules that training applies lazily
(through `tokenize_sample`) and `python -m mvlm.data.check` applies up front.

Each broken rule raises a `SampleError` carrying a short reason code, so that the checker can count
problems by kind while training shows the same message. Images are checked where they are opened
(`mvlm.data.images.load_image`, whose `ImageError` carries a reason code too); lengths where the ids are
built (`tokenize_sample`).
"""

from __future__ import annotations

from typing import Any

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.errors import DataError

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
SYSTEM_ROLE = "system"
KNOWN_ROLES = HUMAN_ROLES + ASSISTANT_ROLES + (SYSTEM_ROLE,)

# Reason codes of SampleError and ImageError, with what each means; the checker's summary uses these words.
REASONS = {
    "missing_image": "image file does not exist",
    "corrupt_image": "image file cannot be decoded",
    "oversized_image": "image larger than the decompression-bomb limit",
    "malformed_image_entry": "'image' entry is neither a path nor bytes",
    "image_count": "number of <image> tags differs from the number of images",
    "image_in_answer": "<image> tag inside an assistant turn",
    "malformed_conversation": "'conversations' missing or not a list",
    "empty_conversation": "no turns (or only a system message)",
    "malformed_turn": "a turn is not {'from': ..., 'value': str}",
    "unknown_role": "a turn's 'from' is not human/user, gpt/assistant or system",
    "role_order": "turns do not alternate human, gpt (an optional system first), or do not end with gpt",
    "empty_answer": "no answer token to learn from",
    "too_long": "the prompt alone fills model_max_length",
}


class SampleError(DataError):
    """A sample that cannot be turned into training ids; the message names the sample and the fix.

    `reason` is one of REASONS' codes.
    """

    def __init__(self, message: str, reason: str = "malformed_conversation"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep the reason when the error crosses a process boundary
        return type(self), (str(self), self.reason)


def sample_images(sample: dict[str, Any]) -> list[Any]:
    """The sample's images as a list (LLaVA allows one path or a list)."""
    image = sample.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def sample_id(sample: dict[str, Any]) -> str:
    return str(sample.get("id", "<no id>"))


def validate_conversation(sample: dict[str, Any]) -> tuple[str | None, list[dict[str, str]]]:
    """Check a sample's `conversations` against LLaVA's rules; return (system message or None, the other turns).

    Rules: a non-empty list of {'from', 'value': str} turns with known roles; an optional system turn
    first; then human and gpt turns alternating, starting with human and ending with gpt; `<image>`
    tags only in human turns, and either none (the images then go first, as LLaVA does) or one per image.
    """
    name = sample_id(sample)
    turns = sample.get("conversations")
    if not isinstance(turns, list):
        raise SampleError(f"sample {name}: 'conversations' must be a non-empty list of {{'from', 'value'}} turns, "
                          f"got {type(turns).__name__}", "malformed_conversation")
    if not turns:
        raise SampleError(f"sample {name}: 'conversations' must be a non-empty list of {{'from', 'value'}} turns",
                          "empty_conversation")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise SampleError(f"sample {name}: turn {index} must be {{'from': ..., 'value': str}}, got {turn!r}",
                              "malformed_turn")
        if turn["from"] not in KNOWN_ROLES:
            raise SampleError(f"sample {name}: turn {index} is from {turn['from']!r}, an unknown role; use one of "
                              f"{KNOWN_ROLES}", "unknown_role")
    system = None
    first = 0
    if turns[0]["from"] == SYSTEM_ROLE:
        system, first = turns[0]["value"], 1
    if first == len(turns):
        raise SampleError(f"sample {name}: the conversation has only a system message", "empty_conversation")
    for index in range(first, len(turns)):
        expected = HUMAN_ROLES if (index - first) % 2 == 0 else ASSISTANT_ROLES
        if turns[index]["from"] not in expected:
            raise SampleError(
                f"sample {name}: turn {index} is from {turns[index]['from']!r}, expected one of {expected} "
                "(turns alternate human, gpt; an optional system turn comes first)",
                "role_order",
            )
    if turns[-1]["from"] not in ASSISTANT_ROLES:
        raise SampleError(f"sample {name}: the conversation must end with an assistant (gpt) answer", "role_order")
    num_images = len(sample_images(sample))
    tags = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns[first:])
    if tags and tags != num_images:
        raise SampleError(
            f"sample {name}: {tags} {DEFAULT_IMAGE_TOKEN} tag(s) in the conversation but {num_images} image(s); "
            f"write one {DEFAULT_IMAGE_TOKEN} per image",
            "image_count",
        )
    for index in range(first + 1, len(turns), 2):
        if DEFAULT_IMAGE_TOKEN in turns[index]["value"]:
            raise SampleError(f"sample {name}: turn {index} (the assistant's) contains {DEFAULT_IMAGE_TOKEN}",
                              "image_in_answer")
    return system, turns[first:]
