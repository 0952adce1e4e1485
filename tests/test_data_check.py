"""Bad data never costs a run: `python -m mvlm.data.check` finds every kind of bad sample up front, with
the same code that training runs lazily; training stops on a bad sample with that report, or skips and
counts them with --skip_bad_samples."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mvlm.data.check import check_samples, load_length_check, main as check_main
from mvlm.data.dataset import SKIPPED_KEY, BadSampleError, DataConfig, LazySupervisedDataset, SupervisedCollator
from mvlm.data.images import anyres_view_count, anyres_views
from tests.helpers import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LENGTH = 64
LONG_TEXT = " ".join(f"zebra{n} quantum{n * 7}" for n in range(60))  # far more than MAX_LENGTH tokens


def turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


QA = turns(("human", "<image>\nWhat color is the square?"), ("gpt", "red"))

# id -> (sample without id, the reason check reports or None for a good sample). Images: see write_fixture.
GOOD = {
    "good-image": {"image": "red.png", "conversations": QA},
    "good-text": {"conversations": turns(("human", "Say yes."), ("gpt", "yes"))},
    "good-implicit-tag": {"image": "red.png", "conversations": turns(("human", "What color?"), ("gpt", "red"))},
    "good-two-images": {"image": ["red.png", "blue.png"], "conversations": turns(
        ("human", "<image>\n<image>\nWhich is red?"), ("gpt", "the first"))},
    "good-system": {"conversations": turns(("system", "Be brief."), ("user", "Hi."), ("assistant", "Hello."))},
    "good-multi-turn": {"image": "blue.png", "conversations": turns(
        ("human", "<image>\nColor?"), ("gpt", "blue"), ("human", "Sure?"), ("gpt", "yes"))},
    "good-long-answer": {"conversations": turns(("human", "Say it."), ("gpt", LONG_TEXT))},  # only cut: a warning
}
BAD = {
    "bad-missing-image": ({"image": "nope.png", "conversations": QA}, "missing_image"),
    "bad-truncated-png": ({"image": "truncated.png", "conversations": QA}, "corrupt_image"),
    "bad-text-as-jpg": ({"image": "notes.jpg", "conversations": QA}, "corrupt_image"),
    "bad-bomb": ({"image": "bomb.png", "conversations": QA}, "oversized_image"),
    "bad-image-entry": ({"image": 5, "conversations": QA}, "malformed_image_entry"),
    "bad-two-tags-one-image": ({"image": "red.png", "conversations": turns(
        ("human", "<image>\n<image>\nWhat?"), ("gpt", "red"))}, "image_count"),
    "bad-tag-without-image": ({"conversations": QA}, "image_count"),
    "bad-image-in-answer": ({"image": "red.png", "conversations": turns(
        ("human", "Color?"), ("gpt", "<image> red"))}, "image_in_answer"),
    "bad-no-conversations": ({}, "malformed_conversation"),
    "bad-conversations-dict": ({"conversations": {"from": "human", "value": "hi"}}, "malformed_conversation"),
    "bad-empty": ({"conversations": []}, "empty_conversation"),
    "bad-only-system": ({"conversations": turns(("system", "Be brief."))}, "empty_conversation"),
    "bad-turn-without-value": ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
                               "malformed_turn"),
    "bad-value-not-string": ({"conversations": turns(("human", 3), ("gpt", "x"))}, "malformed_turn"),
    "bad-turn-not-dict": ({"conversations": ["hello", {"from": "gpt", "value": "x"}]}, "malformed_turn"),
    "bad-unknown-role": ({"conversations": turns(("human", "hi"), ("bot", "x"))}, "unknown_role"),
    "bad-starts-with-gpt": ({"conversations": turns(("gpt", "x"), ("human", "hi"))}, "role_order"),
    "bad-ends-with-human": ({"conversations": turns(("human", "hi"), ("gpt", "x"), ("human", "and?"))},
                            "role_order"),
    "bad-two-humans": ({"conversations": turns(("human", "hi"), ("human", "hi"), ("gpt", "x"))}, "role_order"),
    "bad-system-late": ({"conversations": turns(("human", "hi"), ("system", "s"), ("gpt", "x"))}, "role_order"),
}
TOO_LONG = {"bad-prompt-too-long": {"image": "red.png", "conversations": turns(
    ("human", "<image>\n" + LONG_TEXT), ("gpt", "red"))}}  # found only with a tokenizer
EXPECTED_MESSAGES = {
    "missing_image": "does not exist",
    "corrupt_image": "cannot read image",
    "oversized_image": "refused as a decompression bomb",
    "malformed_image_entry": "image entry 5 is neither a path nor bytes",
    "image_count": "tag(s) in the conversation but",
    "image_in_answer": "turn 1 (the assistant's) contains <image>",
    "malformed_conversation": "'conversations' must be a non-empty list",
    "empty_conversation": "",
    "malformed_turn": "turn 0 must be {'from': ..., 'value': str}",
    "unknown_role": "turn 1 is from 'bot', an unknown role",
    "role_order": "",
    "too_long": "its prompt alone takes",
}


def write_fixture(folder):
    """images/ with good PNGs, two corrupt files and a decompression bomb; data.json (most samples) and
    more.jsonl (the rest)."""
    images = os.path.join(folder, "images")
    os.makedirs(images)
    synthetic.make_image("red", "left").save(os.path.join(images, "red.png"))
    synthetic.make_image("blue", "right").save(os.path.join(images, "blue.png"))
    with open(os.path.join(images, "red.png"), "rb") as handle:
        png = handle.read()
    with open(os.path.join(images, "truncated.png"), "wb") as handle:
        handle.write(png[: len(png) // 2])
    with open(os.path.join(images, "notes.jpg"), "w") as handle:
        handle.write("these are my notes, not a picture\n")
    Image.new("1", (10000, 9000)).save(os.path.join(images, "bomb.png"))  # 90M pixels in an 11 kB file
    samples = [{"id": name, **sample} for name, sample in GOOD.items()]
    samples += [{"id": name, **sample} for name, (sample, _reason) in BAD.items()]
    samples += [{"id": name, **sample} for name, sample in TOO_LONG.items()]
    samples.append({"id": "good-image", "image": "blue.png", "conversations": QA})  # a duplicate id: a warning
    split = len(samples) - 5
    with open(os.path.join(folder, "data.json"), "w") as handle:
        json.dump(samples[:split], handle)
    with open(os.path.join(folder, "more.jsonl"), "w") as handle:
        handle.writelines(json.dumps(sample) + "\n" for sample in samples[split:])
    return samples, split


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("badset"))
    samples, split = write_fixture(folder)
    files = [os.path.join(folder, "data.json"), os.path.join(folder, "more.jsonl")]
    return {"folder": folder, "images": os.path.join(folder, "images"), "samples": samples, "split": split,
            "files": files}


def where(fixture, index):
    if index < fixture["split"]:
        return f"{fixture['files'][0]} #{index}"
    return f"{fixture['files'][1]} #{index - fixture['split']}"


def expected_lines(fixture, with_length):
    """The report lines, one per bad sample in index order, then the warnings of that sample."""
    lines = []
    for index, sample in enumerate(fixture["samples"]):
        name = sample["id"]
        if name in BAD or (with_length and name in TOO_LONG):
            reason = BAD[name][1] if name in BAD else "too_long"
            lines.append((f"bad sample {name} (index {index}, {where(fixture, index)}): {reason}: ",
                          EXPECTED_MESSAGES[reason]))
        if with_length and name == "good-long-answer":
            lines.append((f"warning: sample {name} (index {index}, {where(fixture, index)}): truncated: ",
                          f"> model_max_length={MAX_LENGTH}"))
        if name == "good-image" and index == len(fixture["samples"]) - 1:
            lines.append((f"warning: sample {name} (index {index}, {where(fixture, index)}): duplicate_id: ",
                          "is also the id of the sample at index 0"))
    return lines


def assert_report(output, fixture, with_length):
    lines = output.splitlines()
    expected = expected_lines(fixture, with_length)
    report, summary = lines[: len(expected)], lines[len(expected):]
    for line, (head, message) in zip(report, expected):
        assert line.startswith(head) and message in line[len(head):], (line, head, message)
    num_bad = len(BAD) + (len(TOO_LONG) if with_length else 0)
    total = len(fixture["samples"])
    assert summary[0] == (f"checked {total} samples from 2 file(s): {num_bad} bad, {total - num_bad} good, "
                          f"{2 if with_length else 1} warning(s)")
    counts = {}
    for _sample, reason in BAD.values():
        counts[reason] = counts.get(reason, 0) + 1
    if with_length:
        counts["too_long"] = 1
    assert summary[1] == "bad samples by reason:"
    by_reason = [line.split(" (")[0].strip() for line in summary[2: 2 + len(counts)]]
    assert by_reason == [f"{reason}: {count}" for reason, count in sorted(counts.items())]
    assert not any(good in line for line in report if not line.startswith("warning") for good in GOOD)


def train_flags(checkpoints, data_path, image_folder, output_dir, workers, *extra):
    return [
        "--model_name_or_path", checkpoints("llm", "llama"), "--vision_tower", checkpoints("tower", "clip"),
        "--data_path", data_path, "--image_folder", image_folder, "--output_dir", output_dir,
        "--version", "plain", "--tune_mm_mlp_adapter", "True", "--per_device_train_batch_size", "4",
        "--num_train_epochs", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "True",
        "--dataloader_num_workers", str(workers), "--learning_rate", "1e-3", *extra,
    ]


@pytest.fixture(scope="module")
def training_data(tmp_path_factory):
    """12 caption samples; one copy with a single bad sample, one with four (two adjacent, one the last)."""
    folder = str(tmp_path_factory.mktemp("traindata"))
    samples = json.load(open(synthetic.write_dataset(folder, 12, seed=3, kind="caption")))
    one_bad = [dict(sample) for sample in samples]
    one_bad[5]["image"] = "images/lost.png"
    many_bad = [dict(sample) for sample in samples]
    many_bad[3]["image"] = "images/lost.png"
    many_bad[6]["conversations"] = many_bad[6]["conversations"][::-1]  # gpt first
    many_bad[7]["image"] = [many_bad[7]["image"], many_bad[7]["image"]]  # two images, one <image>
    many_bad[11]["conversations"] = []
    paths = {}
    for name, data in (("one_bad", one_bad), ("many_bad", many_bad)):
        paths[name] = os.path.join(folder, f"{name}.json")
        json.dump(data, open(paths[name], "w"))
    return {"folder": folder, **paths, "bad_ids": sorted(many_bad[i]["id"] for i in (3, 6, 7, 11))}


@pytest.fixture(scope="module", autouse=True)
def background(fixture, checkpoints, training_data, tmp_path_factory):
    """The slow subprocesses (each imports torch and transformers for seconds) started together before the
    first test, so that they run while the in-process tests do; each entry waits for its process."""
    folder = str(tmp_path_factory.mktemp("runs"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    report = os.path.join(folder, "report.json")
    commands = {
        "check": ["-m", "mvlm.data.check", "--data_path", ",".join(fixture["files"]), "--image_folder",
                  fixture["images"], "--model_name_or_path", checkpoints("llm", "llama"), "--vision_tower",
                  checkpoints("tower", "clip"), "--model_max_length", str(MAX_LENGTH), "--num_workers", "2",
                  "--json", report],
        **{f"train{workers}": ["-m", "mvlm.train.train", *train_flags(
            checkpoints, training_data["one_bad"], training_data["folder"], os.path.join(folder, f"w{workers}"),
            workers)] for workers in (2,)},
    }
    processes = {name: subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for name, command in commands.items()}

    def waiter(name):
        def wait():
            stdout, stderr = processes[name].communicate(timeout=300)
            result = subprocess.CompletedProcess(commands[name], processes[name].returncode, stdout, stderr)
            return result, (report if name == "check" else os.path.join(folder, name.replace("train", "w")))
        return wait

    yield {name: waiter(name) for name in processes}
    for process in processes.values():
        if process.poll() is None:
            process.kill()


def test_check_without_tokenizer_reports_every_structural_and_image_problem(fixture, capsys):
    status = check_main(["--data_path", *fixture["files"], "--image_folder", fixture["images"], "--num_workers", "0"])
    output = capsys.readouterr().out
    assert status == 1
    assert_report(output, fixture, with_length=False)
    assert output.splitlines()[-2].startswith("length check: skipped: no tokenizer; pass --model_name_or_path")


def test_check_cli_with_tokenizer_finds_too_long_samples_and_writes_json(fixture, checkpoints, background):
    """As a user runs it: a subprocess, two worker processes, comma-separated data paths, a JSON report."""
    result, out = background["check"]()
    assert "Traceback" not in result.stderr
    assert_report(result.stdout, fixture, with_length=True)
    assert result.stdout.splitlines()[-2] == (
        f"length check: model_max_length={MAX_LENGTH}, 4 tokens per image, tokenizer of "
        f"{checkpoints('llm', 'llama')} + {checkpoints('tower', 'clip')}")
    report = json.load(open(out))
    assert report["num_samples"] == len(fixture["samples"]) and report["num_bad"] == len(BAD) + len(TOO_LONG)
    assert sorted(p["id"] for p in report["problems"] if p["severity"] == "error") == sorted([*BAD, *TOO_LONG])
    missing = next(p for p in report["problems"] if p["id"] == "bad-missing-image")
    assert (missing["file"], missing["position"], missing["reason"]) == (
        fixture["files"][0], len(GOOD), "missing_image")


def test_good_data_exits_zero_and_usage_errors_exit_two(fixture, tmp_path, capsys):
    good = [{"id": name, **sample} for name, sample in GOOD.items() if name != "good-long-answer"]
    path = str(tmp_path / "good.json")
    json.dump(good, open(path, "w"))
    assert check_main(["--data_path", path, "--image_folder", fixture["images"], "--num_workers", "0"]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0] == (
        f"checked {len(good)} samples from 1 file(s): 0 bad, {len(good)} good, 0 warning(s)")
    assert "bad sample" not in output

    assert check_main(["--data_path", str(tmp_path / "absent.json"), "--image_folder", fixture["images"]]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"mvlm.data.check: error: data file {tmp_path / 'absent.json'} does not exist\n"
    assert check_main(["--data_path", path, "--version", "no_such_template"]) == 2
    assert "unknown chat template 'no_such_template'" in capsys.readouterr().err
    assert check_main(["--data_path", path, "--model_name_or_path", str(tmp_path / "no_llm")]) == 2
    assert capsys.readouterr().err.startswith(
        "mvlm.data.check: error: cannot load the tokenizer or vision config from --model_name_or_path "
        f"{tmp_path}/no_llm")

    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,')
    assert check_main(["--data_path", str(broken)]) == 1
    assert capsys.readouterr().out.startswith(f"bad data file: data file {broken} is not valid JSON")


@pytest.fixture(scope="module")
def training_pieces(checkpoints):
    """The tokenizer and image processor training builds from the tiny LLM and tower (via the check's loader)."""
    from mvlm.model.builder import load_image_processor
    from mvlm.model.vision import load_vision_config

    length_check, _ = load_length_check(checkpoints("llm", "llama"), checkpoints("tower", "clip"), "patch")
    tower = checkpoints("tower", "clip")
    return length_check, load_image_processor(tower, load_vision_config(tower))


def test_dataset_rejects_exactly_what_check_reports_with_the_same_message(fixture, training_pieces):
    """One set of rules: a sample fails in training iff check calls it bad, and training's report holds
    check's message."""
    length_check, image_processor = training_pieces
    samples = fixture["samples"]
    config = DataConfig(conv_mode="vicuna_v1", num_image_tokens=length_check.num_image_tokens,
                        image_folder=fixture["images"], max_length=MAX_LENGTH)
    problems = {problem.index: problem for problem in check_samples(samples, config, length_check)
                if not problem.warning}
    dataset = LazySupervisedDataset(samples, length_check.tokenizer, image_processor, config)
    for index, sample in enumerate(samples):
        if index in problems:
            with pytest.raises(BadSampleError) as raised:
                dataset[index]
            assert str(raised.value).startswith(f"bad sample {sample['id']} (index {index}): ")
            assert problems[index].message in str(raised.value), (problems[index], raised.value)
        else:
            item = dataset[index]
            assert len(item["input_ids"]) <= MAX_LENGTH and item[SKIPPED_KEY] == []


@pytest.mark.parametrize("size", [(28, 28), (56, 28), (28, 90), (200, 30), (100, 100)])
@pytest.mark.parametrize("pinpoints", [None, "[(56, 28), (28, 56), (84, 84), (70, 30)]"])
def test_anyres_view_count_matches_the_views_training_makes(size, pinpoints):
    image = Image.new("RGB", size)
    assert anyres_view_count(size, 28, pinpoints) == len(anyres_views(image, 28, pinpoints))


# --------------------------------------------------------------------------------------------------
# Through the training entry point


def stop_report(training_data):
    lost = os.path.join(training_data["folder"], "images/lost.png")
    return [
        "mvlm: training stopped on a bad sample.",
        f"bad sample caption-5 (index 5): image file {lost} does not exist",
        "Check the whole dataset with `python -m mvlm.data.check --data_path ... --image_folder ...`, "
        "or pass --skip_bad_samples to skip and count such samples.",
    ]


def test_training_stops_on_a_bad_sample_with_the_report_not_a_traceback(training_data, background):
    """Default: the first bad sample ends the run at once, naming the sample and the cure, with no traceback;
    with 2 DataLoader workers, where the error comes back wrapped in the worker's traceback text."""
    result, output_dir = background["train2"]()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    report = result.stderr[result.stderr.index("mvlm: training stopped on a bad sample."):].splitlines()
    assert report[:3] == stop_report(training_data)
    assert not os.path.exists(os.path.join(output_dir, "mm_projector.safetensors"))


def test_training_stops_on_a_bad_sample_without_workers(checkpoints, training_data, tmp_path):
    """The same in the main process (0 workers): main() turns the error into SystemExit with the report,
    which Python prints as it is, without a traceback (the subprocess above shows it for real)."""
    from mvlm.train.train import main

    with pytest.raises(SystemExit) as stopped:
        main(train_flags(checkpoints, training_data["one_bad"], training_data["folder"], str(tmp_path), 0))
    assert stopped.value.code.splitlines() == stop_report(training_data)
    assert not os.path.exists(os.path.join(tmp_path, "mm_projector.safetensors"))


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_samples_finishes_and_counts_each_bad_sample_once(checkpoints, training_data, tmp_path, caplog,
                                                                     workers):
    from mvlm.train.train import main

    with caplog.at_level("INFO", logger="mvlm.train"):
        trainer = main(train_flags(checkpoints, training_data["many_bad"], training_data["folder"], str(tmp_path),
                                   workers, "--skip_bad_samples", "True"))
    assert trainer.state.global_step == 3  # 12 samples, batches of 4: every index asked for once
    # 4 bad samples, two of them adjacent (6 then 7 stand in for 6): counted once each, not per encounter
    assert trainer.skipped_samples == 4
    assert "skipped 4 bad sample(s) during training" in caplog.text
    assert os.path.isfile(os.path.join(tmp_path, "mm_projector.safetensors"))


def test_collator_carries_the_skipped_indices(training_pieces):
    length_check, _ = training_pieces
    features = [{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([1, 2]), "pixel_values": None,
                 SKIPPED_KEY: skipped} for skipped in ([], [6, 7], [7])]
    batch = SupervisedCollator(length_check.tokenizer.pad_token_id)(features)
    assert batch[SKIPPED_KEY].tolist() == [6, 7, 7]


def test_length_check_reads_an_mvlm_checkpoint_as_training_continues_from_it(checkpoints, training_pieces, tmp_path):
    """From an mvlm checkpoint the tokenizer and tokens per image come from the checkpoint, no tower flag needed;
    they equal those of the LLM + tower it was built from."""
    from mvlm.model.builder import build_model, save_checkpoint

    model, tokenizer, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"),
                                                    vision_feature_select_strategy="full")
    save_checkpoint(str(tmp_path), model, tokenizer, image_processor)
    from_checkpoint, note = load_length_check(str(tmp_path), None, "patch")
    from_parts, _ = training_pieces
    assert from_checkpoint.num_image_tokens == model.num_image_tokens == 5  # 4 patches + CLS ("full")
    assert from_parts.num_image_tokens == 4
    with_cls, _ = load_length_check(checkpoints("llm", "llama"), checkpoints("tower", "clip"), "cls_patch")
    assert with_cls.num_image_tokens == 5
    assert from_checkpoint.tokenizer.get_vocab() == from_parts.tokenizer.get_vocab()
    assert from_checkpoint.tile_size == from_parts.tile_size == 28
    assert note == f"5 tokens per image, tokenizer of {tmp_path}"
    skipped, why = load_length_check(checkpoints("llm", "llama"), None, "patch")
    assert skipped is None and "--vision_tower is needed" in why


def test_modality_lengths_survive_malformed_samples(fixture, training_pieces):
    """--group_by_modality_length measures every sample at start-up: a malformed one must not crash it there
    (it is reported when built); well-formed samples get their usual signed lengths."""
    length_check, image_processor = training_pieces
    config = DataConfig(conv_mode="vicuna_v1", num_image_tokens=4, image_folder=fixture["images"])
    lengths = LazySupervisedDataset(fixture["samples"], length_check.tokenizer, image_processor, config).modality_lengths
    assert len(lengths) == len(fixture["samples"])
    by_id = {sample["id"]: length for sample, length in zip(fixture["samples"], lengths)}
    def text_length(text):
        return len(length_check.tokenizer(text, add_special_tokens=False)["input_ids"])

    assert by_id["good-text"] == -text_length("Say yes. yes")
    assert by_id["bad-no-conversations"] == 0 and by_id["bad-value-not-string"] == -text_length("x")  # 3 not counted
    assert by_id["good-two-images"] > 8  # two images of 4 tokens plus the text
