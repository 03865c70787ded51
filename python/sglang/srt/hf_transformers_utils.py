"""Configs, generation configs and tokenizers of a model path, through ``transformers``.

A model path is resolved by ``model_loader.resolve`` (local folder, ``.gguf`` file, demo alias,
hub id). HF folders use ``AutoConfig`` / ``AutoTokenizer``. GGUF files get their config from the
metadata (``model_loader.gguf_file``) and their tokenizer (with chat template) from
transformers' GGUF converter; that conversion is slow, so its result is saved once with
``save_pretrained`` into ``<name>-tokenizer/`` beside the file (or under the cache folder when
that is not writable) and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sglang.srt.model_loader.gguf_file import gguf_config
from sglang.srt.model_loader.resolve import ResolvedModel, cache_dir, resolve_model_path

logger = logging.getLogger(__name__)

_STAMP = "sglang_source.json"


def _resolved(model_path: str | os.PathLike[str] | ResolvedModel) -> ResolvedModel:
    if isinstance(model_path, ResolvedModel):
        return model_path
    return resolve_model_path(model_path)


def get_config(
    model_path: str | os.PathLike[str] | ResolvedModel, trust_remote_code: bool = False
) -> Any:
    """The HF config: a ``PretrainedConfig`` for folders, a config dict for GGUF files."""
    source = _resolved(model_path)
    if source.is_gguf:
        return gguf_config(source.path)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ValueError(f"Could not read the config of '{source.folder}': {e}") from e


def get_generation_config(model_path: str | os.PathLike[str] | ResolvedModel) -> dict[str, Any]:
    """``generation_config.json`` of an HF folder as a dict; empty when absent (and for GGUF)."""
    source = _resolved(model_path)
    path = Path(source.folder) / "generation_config.json"
    if source.is_gguf or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", path, e)
        return {}


def get_tokenizer(
    tokenizer_path: str | os.PathLike[str] | ResolvedModel,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Any:
    """An HF tokenizer for a folder, hub id, demo alias or ``.gguf`` file."""
    from transformers import AutoTokenizer

    source = _resolved(tokenizer_path)
    if not source.is_gguf:
        return AutoTokenizer.from_pretrained(
            source.folder, trust_remote_code=trust_remote_code, **kwargs
        )
    return _gguf_tokenizer(source, **kwargs)


def _gguf_tokenizer(source: ResolvedModel, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    stamp = _file_stamp(source.path)
    for folder in _tokenizer_cache_candidates(source):
        if _read_stamp(folder) == stamp:
            return AutoTokenizer.from_pretrained(str(folder), **kwargs)
    logger.info("converting the tokenizer of %s (once; cached afterwards)", source.path)
    tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file, **kwargs)
    for folder in _tokenizer_cache_candidates(source):
        if _save_atomically(tokenizer, folder, stamp):
            break
    return tokenizer


def _tokenizer_cache_candidates(source: ResolvedModel) -> list[Path]:
    path = Path(source.path)
    name = f"{path.stem}-tokenizer"
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return [path.parent / name, cache_dir() / "tokenizers" / f"{name}-{digest}"]


def _file_stamp(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"source": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def _save_atomically(tokenizer: Any, folder: Path, stamp: dict[str, Any]) -> bool:
    """save_pretrained into a temp folder beside ``folder``, then rename it into place."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:
        return False
    try:
        tokenizer.save_pretrained(str(tmp))
        (tmp / _STAMP).write_text(json.dumps(stamp))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the model file
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return True
    except OSError as e:
        logger.warning("could not cache the tokenizer in %s: %s", folder, e)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
