"""``image_data`` items -> images (``multimodal/image_loader.py``): every accepted format (a local
HTTP server started by the test for URLs), the 400-class errors (broken image, unreachable URL,
HTTP error, over-size bytes and pixels, wrong type), and the content hash."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sglang.srt.multimodal.image_loader import (
    ImageError,
    ImageLimits,
    image_hash,
    load_image,
)


def _image(w: int = 24, h: int = 16, seed: int = 0) -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 7 + seed) % 256, (y * 13) % 256, (x * y + seed) % 256)
                 for y in range(h) for x in range(w)])  # fmt: skip
    return img


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def http_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("served")
    (folder / "cat.png").write_bytes(_encoded(_image()))
    (folder / "big.png").write_bytes(_encoded(_image(300, 300)))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(folder), **kw)  # type: ignore[misc]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_format_gives_the_same_pixels(http_images: str, tmp_path: Path) -> None:
    img = _image()
    png = _encoded(img)
    path = tmp_path / "cat.png"
    path.write_bytes(png)
    b64 = base64.b64encode(png).decode()
    items = [img, png, f"data:image/png;base64,{b64}", b64, str(path), f"file://{path}",
             f"{http_images}/cat.png", _image().convert("RGBA")]  # fmt: skip
    want = img.tobytes()
    for item in items:
        out = load_image(item)
        assert out.mode == "RGB" and out.size == (24, 16) and out.tobytes() == want, type(item)
    assert len({image_hash(load_image(i)) for i in items}) == 1  # encoding does not matter


def test_hash_tells_images_apart() -> None:
    a, b = _image(seed=0), _image(seed=1)
    assert image_hash(a) != image_hash(b)
    assert image_hash(a) == image_hash(load_image(_encoded(a, "BMP")))
    assert 0 <= image_hash(a) < 2**63


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("kind", "needle"), [
    ("broken", "not a readable image"),
    ("truncated", "not a readable image"),
    ("unreachable", "could not be fetched"),
    ("http404", "HTTP 404"),
    ("too_many_bytes", "larger than the server's limit"),
    ("url_too_big", "larger than the server's limit"),
    ("too_many_pixels", "pixels"),
    ("not_an_image_string", "is not a file"),
    ("wrong_type", "must be a non-empty string"),
    ("missing_file", "not a file"),
    ("bad_data_url", "not a readable image"),
])  # fmt: skip
def test_errors_are_clear(kind: str, needle: str, http_images: str) -> None:
    small = ImageLimits(max_bytes=2000, max_pixels=100_000, url_timeout_s=5)
    png = _encoded(_image())
    cases = {
        "broken": (b"\x89PNG not really", None),
        "truncated": (png[: len(png) // 2], None),
        "unreachable": (f"http://127.0.0.1:{_closed_port()}/x.png", None),
        "http404": (f"{http_images}/nope.png", None),
        "too_many_bytes": (b"0" * 3000, small),
        "url_too_big": (f"{http_images}/big.png", small),
        "too_many_pixels": (_image(400, 300), small),
        "not_an_image_string": ("hello world, not an image!", None),
        "wrong_type": (42, None),
        "missing_file": ("/no/such/image.png", None),
        "bad_data_url": ("data:image/png;base64,aGVsbG8=", None),
    }
    item, limits = cases[kind]
    with pytest.raises(ImageError, match=needle):
        load_image(item, limits)
    assert issubclass(ImageError, ValueError)  # the request path answers a 400
