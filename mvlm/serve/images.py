"""Image URLs of chat requests -> PIL images, within the server's byte and pixel limits.

OpenAI clients send images as `data:image/png;base64,...` URLs. Each is checked in the order that costs
least: the URL's form, its size before decoding the base64 (so an oversized upload is never decoded), the
decoded bytes, then the pixel count from the image header before any pixel is decoded (so a decompression
bomb is refused unread). http(s) URLs are fetched only when the server allows it (`--allow-remote-images`):
fetching would otherwise let any client make the server open connections on its behalf.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import urllib.error
import urllib.request

from PIL import Image

from mvlm.data.images import ImageError, load_image
from mvlm.errors import MvlmError
from mvlm.serve.api_errors import ApiError, invalid_request

DATA_URL = re.compile(r"data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*),", re.ASCII)
FETCH_TIMEOUT_S = 20


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    """Largest encoded image accepted (bytes after base64 decoding, or as downloaded)."""
    max_pixels: int
    """Largest width x height accepted."""
    allow_remote: bool = False
    """Whether http(s) URLs are fetched."""


def open_image_url(url: str, limits: ImageLimits, param: str) -> Image.Image:
    """The RGB image a request's `image_url.url` names; an ApiError (400) naming `param` if it cannot be used."""
    if url.startswith("data:"):
        data = decode_data_url(url, limits.max_bytes, param)
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise invalid_request(
                f"{param}: this server does not fetch http(s) image URLs (start it with --allow-remote-images); "
                "send the image inline as a data URL (data:image/png;base64,...)", code="remote_images_disabled",
                param=param)
        data = fetch(url, limits.max_bytes, param)
    else:
        raise invalid_request(f"{param}: an image URL must be a data URL (data:image/png;base64,...)"
                              f"{' or http(s)' if limits.allow_remote else ''}, got {url[:40]!r}",
                              code="invalid_image_url", param=param)
    try:
        return load_image(data, max_pixels=limits.max_pixels)
    except ImageError as error:
        if error.reason == "oversized_image":
            raise invalid_request(f"{param}: {error} (--max-image-pixels)", code="image_too_large",
                                  param=param) from error
        raise invalid_request(f"{param}: the data is not an image PIL can read ({error})", code="invalid_image",
                              param=param) from error


def decode_data_url(url: str, max_bytes: int, param: str) -> bytes:
    """The bytes of a base64 data URL of an image type, refused before decoding when over `max_bytes`."""
    match = DATA_URL.match(url)
    if match is None:
        raise invalid_request(f"{param}: not a data URL (expected data:image/<type>;base64,<data>)",
                              code="invalid_image_url", param=param)
    media = match["media"].strip().lower()
    if media and not media.startswith("image/"):
        raise invalid_request(f"{param}: the data URL holds {media!r}, not an image (expected image/png, "
                              "image/jpeg, ...)", code="invalid_image", param=param)
    if "base64" not in [part.strip().lower() for part in match["params"].split(";")]:
        raise invalid_request(f"{param}: the data URL is not base64-encoded (expected data:{media or 'image/png'}"
                              ";base64,...)", code="invalid_image_url", param=param)
    payload = url[match.end():]
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise too_large(param, len(payload) // 4 * 3, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise invalid_request(f"{param}: the data URL's base64 is invalid ({error})", code="invalid_image_url",
                              param=param) from error
    if len(data) > max_bytes:
        raise too_large(param, len(data), max_bytes)
    if not data:
        raise invalid_request(f"{param}: the data URL holds no data", code="invalid_image", param=param)
    return data


class DownloadError(MvlmError):
    """An image URL that could not be read; `too_large` when it held more than the byte limit."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def download(url: str, max_bytes: int, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """The bytes at an http(s) URL, reading at most one byte over `max_bytes` (the chat CLI and the server)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot fetch image URL {url}: {reason}") from error
    if len(data) > max_bytes:
        raise DownloadError(f"image URL {url} is larger than {max_bytes} bytes", too_large=True)
    return data


def fetch(url: str, max_bytes: int, param: str) -> bytes:
    """Download an image URL for a request; an ApiError (400) naming `param` when it cannot be used."""
    try:
        return download(url, max_bytes)
    except DownloadError as error:
        if error.too_large:
            raise too_large(param, max_bytes + 1, max_bytes) from error
        raise invalid_request(f"{param}: {error}", code="invalid_image_url", param=param) from error


def too_large(param: str, size: int, max_bytes: int) -> ApiError:
    """`size`: the decoded size, its estimate from the base64 length, or max_bytes + 1 for a download cut short."""
    known = f" ({size} bytes)" if size > max_bytes + 1 else ""
    return invalid_request(f"{param}: the image is larger than this server's limit of {max_bytes} bytes{known} "
                           "(--max-image-bytes)", code="image_too_large", param=param)
