"""VQA answer normalisation as EvalAI applies it, and the VQA soft accuracy.

The normalisation is the one of `EvalAIAnswerProcessor` (MMF/pythia, used by LLaVA's TextVQA scorer
and its VQAv2/VizWiz upload converters), reimplemented from its behaviour, quirks included:
1. lowercase; delete ',' and '?'; "'s" -> " 's"; newlines/tabs -> spaces; strip;
2. each mark of `;/[]"{}()=+\\_-><@`,?!` is deleted when it touches a space in the text (or when the
   text holds a digit,digit group, which step 1 made impossible), otherwise replaced by a space;
3. '.' is deleted unless a digit follows (the official pattern meant a look-behind for a digit too,
   but its `(?!<=\\d)` typo is a no-op), at most 32 times (it passes `re.UNICODE`, 32, as the count);
4. number words none/zero..ten become digits, the articles a/an/the are dropped, and words written
   without their apostrophe get it back ("dont" -> "don't") by the VQA contraction table.
"""

from __future__ import annotations

import re

PUNCTUATION_MARKS = ';/[]"{}()=+\\_-><@`,?!'  # iterated character by character
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
PERIODS_REMOVED_AT_MOST = 32
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset(("a", "an", "the"))

# The VQA evaluation's contraction table as (written form -> canonical form) pairs. Entries that can never
# match after steps 1-3 are left out: keys with an upper-case letter (the text is lowercased) and keys
# holding "'s" (step 1 splits that off), e.g. "Im", "let's", "she's".
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't | couldn'tve couldn't've
couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't | hadnt hadn't | hadnt've hadn't've
hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd | hed've he'd've | he'dve he'd've | hes he's
howd how'd | howll how'll | hows how's | isnt isn't | itd it'd | itd've it'd've | it'dve it'd've | itll it'll
maam ma'am | mightnt mightn't | mightnt've mightn't've | mightn'tve mightn't've | mightve might've
mustnt mustn't | mustve must've | neednt needn't | notve not've | oclock o'clock | oughtnt oughtn't
'ows'at 'ow's'at | shant shan't | shed've she'd've | she'dve she'd've | shouldve should've
shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've | somebody'd somebodyd
somebodyd've somebody'd've | somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's
someoned someone'd | someoned've someone'd've | someone'dve someone'd've | someonell someone'll
someones someone's | somethingd something'd | somethingd've something'd've | something'dve something'd've
somethingll something'll | thats that's | thered there'd | thered've there'd've | there'dve there'd've
therere there're | theres there's | theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll
theyre they're | theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've | weve we've
werent weren't | whatll what'll | whatre what're | whats what's | whatve what've | whens when's
whered where'd | wheres where's | whereve where've | whod who'd | whod've who'd've | who'dve who'd've
wholl who'll | whos who's | whove who've | whyll why'll | whyre why're | whys why's | wont won't
wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all
yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've | y'all'dve y'all'd've
youd you'd | youd've you'd've | you'dve you'd've | youll you'll | youre you're | youve you've
"""
CONTRACTIONS = dict(pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", " | ").split("|") if pair.strip())


def _strip_punctuation(text: str) -> str:
    digit_comma = DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION_MARKS:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or digit_comma else " ")
    return PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=PERIODS_REMOVED_AT_MOST)


def normalize_answer(text: str) -> str:
    """EvalAI's normal form of a VQA answer (see the module docstring)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    words = [NUMBER_WORDS.get(word, word) for word in _strip_punctuation(text).lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def soft_scores(human_answers: list[str]) -> dict[str, float]:
    """VQA accuracy of every distinct (normalised) human answer.

    For each of the 10 leave-one-out subsets of 9 humans an answer scores min(#humans giving it / 3, 1);
    its accuracy is the mean over the 10 subsets (so 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1.0).
    """
    scores = {}
    for candidate in set(human_answers):
        per_subset = []
        for left_out in range(len(human_answers)):
            matches = sum(1 for index, human in enumerate(human_answers) if index != left_out and human == candidate)
            per_subset.append(min(1, matches / 3))
        scores[candidate] = sum(per_subset) / len(per_subset)
    return scores
