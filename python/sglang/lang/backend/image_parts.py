"""Images of a program's chat messages, as the chat APIs take them.

The interpreter records a turn with images as ``[{"type": "text", "text": <the turn's text>},
{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}, ...]``, the text holding
the template's ``image_token`` where each ``sgl.image`` stood. That token is the frontend's
placeholder, not text for the model: a chat API gets each image as a part where its token stood
(the server's chat template then writes the model's own placeholder for it).
"""

from __future__ import annotations

from typing import Any

# The leading base64 characters of image formats -> their media type.
_BASE64_MEDIA_TYPES = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"),
                       ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))
_INTERPRETER_PREFIX = "data:image/jpeg;base64,"


def media_type(data: str) -> str:
    """The media type of base64 image data (JPEG when the format is not recognized)."""
    return next((m for head, m in _BASE64_MEDIA_TYPES if data.startswith(head)), "image/jpeg")


def image_data_url(url: str) -> str:
    """The interpreter's ``data:image/jpeg;base64,`` URL with the image's own media type."""
    if not url.startswith(_INTERPRETER_PREFIX):
        return url
    data = url[len(_INTERPRETER_PREFIX):]
    return f"data:{media_type(data)};base64,{data}"


def chat_content(parts: list[dict[str, Any]], image_token: str) -> list[dict[str, Any]]:
    """A turn's OpenAI content parts with each image where its ``image_token`` stood in the
    text; when the tokens do not match the images one to one, the text without them and then
    the images."""
    text = "".join(p["text"] for p in parts if p.get("type") == "text")
    images = [{"type": "image_url", "image_url": {"url": image_data_url(p["image_url"]["url"])}}
              for p in parts if p.get("type") == "image_url"]
    pieces = text.split(image_token) if image_token else [text]
    if len(pieces) != len(images) + 1:
        rest = text.replace(image_token, "") if image_token else text
        return ([{"type": "text", "text": rest}] if rest else []) + images
    out: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if piece:
            out.append({"type": "text", "text": piece})
        if i < len(images):
            out.append(images[i])
    return out


def chat_messages(messages: list[dict[str, Any]], image_token: str) -> list[dict[str, Any]]:
    """The program's messages for the OpenAI chat API (``chat_content`` for turns with
    images)."""
    return [{**m, "content": chat_content(m["content"], image_token)}
            if isinstance(m.get("content"), list) else m for m in messages]


def anthropic_content(parts: list[dict[str, Any]], image_token: str) -> list[dict[str, Any]]:
    """A turn's content as Anthropic blocks: text blocks and base64 ``image`` blocks (an image
    given by http(s) URL as a ``url`` source), in ``chat_content`` order."""
    blocks: list[dict[str, Any]] = []
    for part in chat_content(parts, image_token):
        if part["type"] == "text":
            blocks.append(part)
            continue
        url = part["image_url"]["url"]
        if url.startswith("data:") and ";base64," in url:
            head, data = url.split(",", 1)
            source = {"type": "base64", "media_type": head[5:].split(";")[0], "data": data}
        else:
            source = {"type": "url", "url": url}
        blocks.append({"type": "image", "source": source})
    return blocks
