"""Model builds, shared by serving and tuning: PyTorch weights (folder, hub id or GGUF file) -> an
onnxruntime-genai model folder, made by ONNX Runtime's own model builder (fused grouped-query
attention, a shared KV-cache buffer, INT4 weights with accuracy level 4 for pretrained-size models).
`ensure_onnx` is the bot's loader: a model that is not yet built is built once, on first load, into a
cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bot.models.registry import HF_DIR, ONNX_DIR

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"  # what marks a built folder
PRECISIONS = ("fp32", "int4")
# Weights files larger than this are a pretrained-size model and get INT4 weights by default; smaller
# ones (the starter) stay fp32, where quantising saves nothing and costs accuracy.
INT4_FROM_BYTES = 100 * 2**20
# Files the builder may not carry over but the tokenizer (chat template included) needs.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def default_precision(model_dir: Path) -> str:
    weights = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    return "int4" if weights >= INT4_FROM_BYTES else "fp32"


def export_onnx(model_dir: Path | str, out_dir: Path, precision: str | None = None) -> Path:
    """Build a causal LM (folder or hub id) for onnxruntime-genai on CPU: fp32 or int4 (weight-only,
    MatMulNBits with accuracy level 4, i.e. int8 compute). None: by the model's size. The builder runs
    as its own process, so its peak memory is gone when it ends."""
    precision = precision or (default_precision(Path(model_dir)) if Path(model_dir).is_dir() else "int4")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = ["-i", str(model_dir)] if Path(model_dir).is_dir() else ["-m", str(model_dir)]
    with tempfile.TemporaryDirectory(prefix="builder-cache-") as cache:
        command = [
            *(sys.executable, "-m", "onnxruntime_genai.models.builder", *source),
            *("-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", cache),
            *(("--extra_options", "int4_accuracy_level=4") if precision == "int4" else ()),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the model builder failed on {model_dir}: {done.stderr.strip()[-2000:]}")
    copy_side_files(Path(model_dir), out_dir)
    return out_dir


def ensure_onnx(source: str, cache_root: Path) -> Path:
    """A built folder for `source`: a built folder as is; a hub id, PyTorch folder or GGUF file is
    built once into `cache_root` and reused after."""
    path = Path(source)
    if (path / GENAI_CONFIG).exists():
        return path
    target = cache_root / (path.name.replace(".", "_") + "-" + hashlib.sha1(source.encode()).hexdigest()[:8])
    if (target / GENAI_CONFIG).exists():
        return target
    log.info("building %s for ONNX Runtime (first load only) into %s", source, target)
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
    """Dequantise a GGUF file into a PyTorch folder transformers and the builder can read (needs `gguf`)."""
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
