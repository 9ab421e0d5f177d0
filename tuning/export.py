"""Export stage: PyTorch weights -> ONNX with KV cache (optimum), then optional quantisation.

`ensure_onnx` also serves the bot's loader: a hub id, a local folder or a GGUF file that is not yet
ONNX is exported once, on first load, into a cache folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
# Files the quantiser does not carry over but the runtime needs.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def export_onnx(model_dir: Path | str, out_dir: Path) -> Path:
    """Export a causal LM (folder or hub id) to ONNX with past key values."""
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("model.onnx*"):  # the exporter appends to an existing external-data file
        old.unlink()
    main_export(str(model_dir), output=out_dir, task="text-generation-with-past", do_validation=False)
    _copy_side_files(Path(model_dir), out_dir)
    return out_dir


def quantize(onnx_dir: Path, out_dir: Path, mode: str) -> Path:
    """`int8`: dynamic INT8 of the weight MatMuls only. `int4`: weight-only 4-bit (MatMulNBits)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if mode == "int8":
        from optimum.onnxruntime import AutoQuantizationConfig, ORTQuantizer

        # Only MatMuls whose second input is a stored weight: quantising the attention and rotary
        # MatMuls (activation x activation) costs accuracy and gains nothing.
        config_for_cpu = AutoQuantizationConfig.avx512_vnni if _cpu_has("avx512_vnni") else AutoQuantizationConfig.avx2
        qconfig = config_for_cpu(is_static=False, per_channel=True, nodes_to_quantize=weight_matmuls(onnx_dir / ONNX_FILE),
                                 operators_to_quantize=["MatMul"])
        quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=ONNX_FILE)
        quantizer.quantize(qconfig, save_dir=out_dir, file_suffix=None)
    elif mode == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(onnx_dir / ONNX_FILE))
        quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True)
        quantizer.process()
        onnx.save_model(quantizer.model.model, str(out_dir / ONNX_FILE), save_as_external_data=_is_large(onnx_dir))
    else:
        raise ValueError(f"unknown quantisation {mode!r}: use int8 or int4")
    _copy_side_files(onnx_dir, out_dir)
    return out_dir


def weight_matmuls(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights]


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
        model_dir = gguf_to_folder(path, scratch / "hf") if path.suffix == ".gguf" else source
        export_onnx(model_dir, scratch / "onnx")
        cache_root.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / "onnx", target)  # appears whole or not at all
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
    model.generation_config.save_pretrained(out_dir)
    return out_dir


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in SIDE_FILES:
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _is_large(onnx_dir: Path) -> bool:
    return any(p.suffix == ".data" or p.name.endswith("_data") for p in onnx_dir.iterdir())
