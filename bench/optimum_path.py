"""The previous served path: optimum's ONNX export (loaded with `ORTModelForCausalLM`) and onnxruntime's
quantisers, kept as the benchmarks' baseline against the onnxruntime-genai builds the bot now serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from bot.models.export import copy_side_files

ONNX_FILE = "model.onnx"
CONFIG_FILES = ("config.json", "generation_config.json")  # ORTModelForCausalLM reads them beside the graph


def optimum_export(model_dir: Path, out_dir: Path) -> Path:
    """A causal LM folder -> ONNX with past key values, as optimum exports it."""
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("model.onnx*"):  # the exporter appends to an existing external-data file
        old.unlink()
    main_export(str(model_dir), output=out_dir, task="text-generation-with-past", do_validation=False)
    copy_side_files(model_dir, out_dir)
    for name in CONFIG_FILES:
        if (model_dir / name).exists() and not (out_dir / name).exists():
            shutil.copy2(model_dir / name, out_dir / name)
    return out_dir


def quantize(onnx_dir: Path, out_dir: Path, mode: str) -> Path:
    """`int8`: dynamic INT8 of the weight MatMuls only. `int4`: weight-only 4-bit (MatMulNBits)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if mode == "int8":
        from optimum.onnxruntime import AutoQuantizationConfig, ORTQuantizer

        # Only MatMuls whose second input is a stored weight: quantising the attention and rotary
        # MatMuls (activation x activation) costs accuracy and gains nothing.
        config_for_cpu = AutoQuantizationConfig.avx512_vnni if _cpu_has("avx512_vnni") else AutoQuantizationConfig.avx2
        qconfig = config_for_cpu(
            is_static=False,
            per_channel=True,
            nodes_to_quantize=weight_matmuls(onnx_dir / ONNX_FILE),
            operators_to_quantize=["MatMul"],
        )
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
    copy_side_files(onnx_dir, out_dir)
    for name in CONFIG_FILES:
        if (onnx_dir / name).exists():
            shutil.copy2(onnx_dir / name, out_dir / name)
    return out_dir


def weight_matmuls(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights]


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _is_large(onnx_dir: Path) -> bool:
    return any(p.suffix == ".data" or p.name.endswith("_data") for p in onnx_dir.iterdir())
