"""Read LLaVA-format datasets: json lists, jsonl, and `datasets` sources (saved folders, parquet files).

Every source becomes a list of plain sample dicts (`{"id", "image"?, "conversations"}`); a sample's
images are paths relative to `--image_folder`, absolute paths, or raw bytes (a `datasets` Image column).
A malformed file is reported with its name (and line, for jsonl) before any training starts.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from mvlm.data.images import ImageError, load_image
from mvlm.data.tokenize import sample_images
from mvlm.errors import DataError
from mvlm.jsonl import read_json_objects

PARQUET_SUFFIXES = (".parquet",)


class DataFormatError(DataError):
    """A data file that cannot be read as LLaVA samples; the message names the file."""


def load_samples(data_paths: str | Iterable[str]) -> list[dict[str, Any]]:
    """All samples of one or several sources, in order. Several paths may also be given comma-separated."""
    samples: list[dict[str, Any]] = []
    for _path, source_samples in load_sources(data_paths):
        samples += source_samples
    return samples


def split_data_paths(data_paths: str | Iterable[str]) -> list[str]:
    """The individual sources of `--data_path` (several values, each possibly comma-separated)."""
    if isinstance(data_paths, str):
        data_paths = [data_paths]
    paths = [path.strip() for entry in data_paths for path in entry.split(",") if path.strip()]
    if not paths:
        raise DataFormatError("no --data_path given")
    return paths


def load_sources(data_paths: str | Iterable[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(path, its samples) for each source, in order: lets a report say which file a sample came from."""
    return [(path, _load_source(path)) for path in split_data_paths(data_paths)]


def _load_source(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        raise DataFormatError(f"data file {path} does not exist")
    if os.path.isdir(path) or path.endswith(PARQUET_SUFFIXES):
        return _load_datasets_source(path)
    if path.endswith(".jsonl"):
        return _load_jsonl(path)
    return _load_json(path)


def _load_json(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"data file {path} is not valid JSON: {error}") from error
    if not isinstance(data, list) or not all(isinstance(sample, dict) for sample in data):
        raise DataFormatError(f"data file {path} must hold a JSON list of sample objects (LLaVA's format)")
    return data


def _load_jsonl(path: str) -> list[dict[str, Any]]:
    def bad_line(line_number: int, decode_error: ValueError | None) -> DataFormatError:
        if decode_error is not None:
            return DataFormatError(f"data file {path}, line {line_number}: not valid JSON: {decode_error}")
        return DataFormatError(f"data file {path}, line {line_number}: expected a sample object")

    return read_json_objects(path, bad_line)[0]


def _load_datasets_source(path: str) -> list[dict[str, Any]]:
    """A folder written by `Dataset.save_to_disk`, a folder of parquet files, or one parquet file."""
    import datasets

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_info.json")):
        dataset = datasets.load_from_disk(path)
    else:
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(path, name) for name in os.listdir(path) if name.endswith(PARQUET_SUFFIXES)
        )
        if not files:
            raise DataFormatError(f"data folder {path} holds neither a saved dataset nor parquet files")
        dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"]
    # Keep images undecoded: bytes or paths, opened lazily by the dataset like any other image.
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return [_plain_image_entries(dict(sample)) for sample in dataset]


def _plain_image_entries(sample: dict[str, Any]) -> dict[str, Any]:
    """A `datasets` Image cell is {"bytes", "path"}: keep the bytes when present, else the path."""
    def plain(entry: Any) -> Any:
        if isinstance(entry, dict) and ("bytes" in entry or "path" in entry):
            return entry.get("bytes") or entry.get("path")
        return entry

    image = sample.get("image")
    if isinstance(image, list):
        sample["image"] = [plain(entry) for entry in image]
    elif image is not None:
        sample["image"] = plain(image)
    else:
        sample.pop("image", None)
    return sample


def resolve_image(entry: str | bytes, image_folder: str | None) -> str | bytes:
    """Where an image entry points: bytes as they are, relative paths under `image_folder`."""
    if isinstance(entry, (bytes, bytearray)):
        return bytes(entry)
    if not isinstance(entry, str):
        raise ImageError(f"image entry {entry!r} is neither a path nor bytes", "malformed_image_entry")
    if image_folder and not os.path.isabs(entry):
        return os.path.join(image_folder, entry)
    return entry


def load_sample_images(sample: dict[str, Any], image_folder: str | None) -> list[Any]:
    """The sample's images as RGB PIL images; errors name the file."""
    return [load_image(resolve_image(entry, image_folder)) for entry in sample_images(sample)]
