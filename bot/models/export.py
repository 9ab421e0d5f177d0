"""ONNX export, shared by serving and tuning: PyTorch weights (folder, hub id or GGUF file) ->
ONNX with KV cache (optimum). `ensure_onnx` is the bot's loader: a model that is not yet ONNX is
exported once, on first load, into a cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from bot.models.registry import HF_DIR, ONNX_DIR

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
# Files the exporter and the quantiser do not carry over but the runtime needs.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def export_onnx(model_dir: Path | str, out_dir: Path) -> Path:
    """Export a causal LM (folder or hub id) to ONNX with past key values."""
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("model.onnx*"):  # the exporter appends to an existing external-data file
        old.unlink()
    main_export(str(model_dir), output=out_dir, task="text-generation-with-past", do_validation=False)
    copy_side_files(Path(model_dir), out_dir)
    return out_dir


def ensure_onnx(source: str, cache_root: Path) -> Path:
    """An ONNX folder for `source`: an ONNX folder as is; a hub id, PyTorch folder or GGUF file is
    exported once into `cache_root` and reused after."""
    path = Path(source)
    if (path / ONNX_FILE).exists():
        return path
    target = cache_root / (path.name.replace(".", "_") + "-" + hashlib.sha1(source.encode()).hexdigest()[:8])
    if (target / ONNX_FILE).exists():
        return target
    log.info("exporting %s to ONNX (first load only) into %s", source, target)
    scratch = Path(tempfile.mkdtemp(prefix="export-", dir=cache_root.parent if cache_root.parent.exists() else None))
    try:
        model_dir = gguf_to_folder(path, scratch / HF_DIR) if path.suffix == ".gguf" else source
        export_onnx(model_dir, scratch / ONNX_DIR)
        cache_root.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / ONNX_DIR, target)  # appears whole or not at all
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def gguf_to_folder(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into a PyTorch folder transformers and optimum can read (needs `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_file.exists():
        raise FileNotFoundError(f"GGUF file not found: {gguf_file}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    return out_dir


def copy_side_files(src: Path, dst: Path) -> None:
    for name in SIDE_FILES:
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
