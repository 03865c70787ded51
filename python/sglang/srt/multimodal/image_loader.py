"""Images of a request's ``image_data``, loaded in the HTTP process (issue 14's first piece).

``load_image(item, limits)`` accepts what SGLang's ``image_data`` accepts for one image:

* a ``PIL.Image.Image``;
* ``bytes`` of an encoded image (PNG, JPEG, WebP, ...);
* a ``data:image/...;base64,...`` URL, or bare base64 text;
* an ``http://`` / ``https://`` URL (fetched with ``limits.url_timeout_s`` and at most
  ``limits.max_bytes`` read);
* a ``file://`` URL or a local file path.

It returns the decoded RGB image; anything else raises ``ImageError`` (a ``ValueError``: a 400
naming the problem) - an unreadable or truncated image, a URL that cannot be fetched in time, more
bytes or pixels than the limits allow. ``image_hash`` is a 63-bit digest of the decoded pixels
(mode, size, bytes): equal images give equal hashes whatever their encoding, which is what the
radix cache keys image positions on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$", re.ASCII)


class ImageError(ValueError):
    """An ``image_data`` item that cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 << 20  # encoded size (a file, a download, decoded base64)
    max_pixels: int = 40_000_000  # width x height after decoding
    url_timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> ImageLimits:
        """The defaults, or ``SGLANG_IMAGE_MAX_BYTES`` / ``SGLANG_IMAGE_MAX_PIXELS`` /
        ``SGLANG_IMAGE_URL_TIMEOUT`` (seconds) where set."""
        env = os.environ
        return cls(max_bytes=int(env.get("SGLANG_IMAGE_MAX_BYTES", cls.max_bytes)),
                   max_pixels=int(env.get("SGLANG_IMAGE_MAX_PIXELS", cls.max_pixels)),
                   url_timeout_s=float(env.get("SGLANG_IMAGE_URL_TIMEOUT", cls.url_timeout_s)))


def load_image(item: Any, limits: ImageLimits | None = None) -> Any:
    """The RGB ``PIL.Image.Image`` of one ``image_data`` item (see the module docstring)."""
    from PIL import Image

    limits = limits or ImageLimits()
    if isinstance(item, Image.Image):
        return _checked(item, limits)
    if isinstance(item, (bytes, bytearray)):
        return _decode(bytes(item), limits, "the image bytes")
    if not isinstance(item, str) or not item:
        raise ImageError(f"image_data items must be a non-empty string (path, URL, base64) or "
                         f"image bytes, got {type(item).__name__}.")
    if _DATA_URL.match(item):
        return _decode(_b64(item[item.index(",") + 1:], limits), limits, "the data URL")
    lower = item[:8].lower()
    if lower.startswith(("http://", "https://")):
        return _decode(_fetch(item, limits), limits, f"the image at {_short(item)}")
    if lower.startswith("file://"):
        return _decode(_read_file(item[len("file://"):], limits), limits, _short(item))
    if len(item) < 4096 and os.path.isfile(item):
        return _decode(_read_file(item, limits), limits, _short(item))
    if _BASE64.match(item[:256]):
        return _decode(_b64(item, limits), limits, "the base64 image")
    raise ImageError(f"image_data item {_short(item)!r} is not a file, an http(s) URL, a data "
                     "URL or base64 image data.")


def image_hash(image: Any) -> int:
    """63-bit digest of the decoded pixels (mode, size and bytes)."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _b64(text: str, limits: ImageLimits) -> bytes:
    if len(text) * 3 // 4 > limits.max_bytes:
        raise ImageError(f"The image is larger than the server's limit of {limits.max_bytes} "
                         "bytes.")
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"The base64 image data cannot be decoded: {exc}") from None


def _read_file(path: str, limits: ImageLimits) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(f"The image file {_short(path)} has {size} bytes, more than the "
                             f"server's limit of {limits.max_bytes}.")
        return p.read_bytes()
    except OSError as exc:
        raise ImageError(f"The image file {_short(path)} cannot be read: {exc.strerror}") from None


def _fetch(url: str, limits: ImageLimits) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "sglang"})
    try:
        with urllib.request.urlopen(request, timeout=limits.url_timeout_s) as resp:
            data = resp.read(limits.max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"The image at {_short(url)} could not be fetched: HTTP {exc.code}.") \
            from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"The image at {_short(url)} could not be fetched: {reason}.") from None
    if len(data) > limits.max_bytes:
        raise ImageError(f"The image at {_short(url)} is larger than the server's limit of "
                         f"{limits.max_bytes} bytes.")
    return data


def _decode(data: bytes, limits: ImageLimits, what: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise ImageError(f"The image is larger than the server's limit of {limits.max_bytes} "
                         "bytes.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img.size, limits)
            img.load()
            return _checked(img.convert("RGB") if img.mode != "RGB" else img.copy(), limits)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:  # fmt: skip
        raise ImageError(f"{what[0].upper()}{what[1:]} is not a readable image: {exc}") from None


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > limits.max_pixels:
        raise ImageError(f"The image has {w}x{h} pixels; the server takes 1 to "
                         f"{limits.max_pixels} pixels.")


def _checked(img: Any, limits: ImageLimits) -> Any:
    _check_pixels(img.size, limits)
    return img if img.mode == "RGB" else img.convert("RGB")
