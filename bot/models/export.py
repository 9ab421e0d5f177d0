"""Model builds, shared by serving and tuning: PyTorch weights (folder, hub id or GGUF file) -> an
onnxruntime-genai model folder, made by ONNX Runtime's own model builder (fused grouped-query
attention, a shared KV-cache buffer, INT4 weights computed in int8 for pretrained-size models, with an
int8 twin for runs of many rows), and scoring only the last position it reads.
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
# Beside an INT4 build: its int8 twin, for model runs of many rows (`quantize_int8`).
INT8_FILE = "model-int8.onnx"
GENAI_CONFIG = "genai_config.json"  # what marks a built folder
PRECISIONS = ("fp32", "int4")
# Weights files larger than this are a pretrained-size model and get INT4 weights by default; smaller
# ones (the starter) stay fp32, where quantising saves nothing and costs accuracy.
INT4_FROM_BYTES = 100 * 2**20
LAST_POSITION = "/lm_head/last_position"  # the Slice `last_logits_only` puts before the LM head
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
    MatMulNBits with int8 compute). None: by the model's size. The builder makes the fp32 graph; INT4
    is ONNX Runtime's quantizer run on that file: the builder's own INT4 path holds the fp32 graph
    twice in memory (6.3 GiB for a 0.5B model against 3.4 GiB this way). Each runs as its own process,
    so its peak memory is gone when it ends."""
    precision = precision or (default_precision(Path(model_dir)) if Path(model_dir).is_dir() else "int4")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = ["-i", str(model_dir)] if Path(model_dir).is_dir() else ["-m", str(model_dir)]
    with tempfile.TemporaryDirectory(prefix="builder-") as work:
        built = Path(work) / "fp32" if precision == "int4" else out_dir
        builder = [sys.executable, "-m", "onnxruntime_genai.models.builder", *source]
        _run(
            [*builder, "-o", str(built), "-p", "fp32", "-e", "cpu", "-c", str(Path(work) / "cache")],
            f"the model builder failed on {model_dir}",
        )
        if precision == "int4":
            _run(
                [sys.executable, "-m", __name__, str(built / ONNX_FILE), str(out_dir / ONNX_FILE)],
                f"INT4 quantisation failed on {model_dir}",
            )
            for path in built.iterdir():  # the runtime's config and the tokenizer, as built
                if not path.name.startswith(ONNX_FILE):
                    shutil.copy2(path, out_dir / path.name)
            quantize_int8(built / ONNX_FILE, out_dir)
            last_logits_only(out_dir / INT8_FILE)
    last_logits_only(out_dir / ONNX_FILE)
    copy_side_files(Path(model_dir), out_dir)
    return out_dir


def builds(onnx_dir: Path) -> list[str]:
    """What a built folder holds, for its version's manifest: "fp32", or "int4" and its "int8" twin."""
    import onnx

    graph = onnx.load(str(onnx_dir / ONNX_FILE), load_external_data=False).graph
    held = ["int4" if any(node.op_type == "MatMulNBits" for node in graph.node) else "fp32"]
    return held + ["int8"] * (onnx_dir / INT8_FILE).exists()


def _run(command: list[str], failure: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{failure}: {done.stderr.strip()[-2000:]}")


def quantize_int4(source: Path, target: Path) -> None:
    """INT4 weights for every MatMul of an fp32 build, with ONNX Runtime's own quantizer: blocks of
    128 weights with a zero point each, computed in int8 (accuracy level 4). Measured on Qwen2.5-0.5B
    (bench/RESULTS.md): ~20% faster than the builder's default (blocks of 32, symmetric) and as close
    to fp32 (teacher-forced top-1 agreement 0.887 vs 0.898, NLL 0.558 vs 0.561)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        str(source),
        block_size=128,
        is_symmetric=False,
        accuracy_level=4,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)


def quantize_int8(fp32_file: Path, out_dir: Path) -> None:
    """`INT8_FILE` in `out_dir`, beside its INT4 build: the fp32 build with every MatMul weight in int8,
    one scale per output column, multiplied with int8-quantised activations (DynamicQuantizeMatMul).
    The INT4 kernel pays per row, where int8 matrix products (VNNI, AMX) take many rows for little more
    than one: the runtime sends prompts and steps of several answers here (`batching.INT8_FROM_ROWS`),
    single rows to the INT4 build, which reads half the bytes. The tensors it shares with the INT4
    build (the embedding, norms, rotary tables) stay in that build's data file, not copied, so the twin
    reads that file at its offsets as written: re-saving `model.onnx` with its data breaks the twin.
    One weight at a time is in memory."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data, uses_external_data

    model = onnx.load(str(fp32_file), load_external_data=False)
    graph = model.graph
    int4 = onnx.load(str(out_dir / ONNX_FILE), load_external_data=False).graph.initializer
    shared = {tensor.name: tensor.external_data for tensor in int4 if uses_external_data(tensor)}
    matrices = {tensor.name for tensor in graph.initializer if len(tensor.dims) == 2}
    weights = {node.input[1] for node in graph.node if node.op_type == "MatMul" and node.input[1] in matrices}
    # A tied model's embedding reads the LM head's weight too: that one is kept as it is as well.
    used_elsewhere = {name for node in graph.node if node.op_type != "MatMul" for name in node.input}
    data_file = INT8_FILE + ".data"
    initializers = []

    def read(tensor: onnx.TensorProto) -> np.ndarray:
        if not uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        info = {entry.key: entry.value for entry in tensor.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        count, offset = int(np.prod(tensor.dims)), int(info.get("offset", 0))
        return np.fromfile(fp32_file.parent / info["location"], dtype, count, offset=offset).reshape(tensor.dims)

    with open(out_dir / data_file, "wb") as data:

        def stored(name: str, array: np.ndarray) -> onnx.TensorProto:
            tensor = numpy_helper.from_array(array, name)
            set_external_data(tensor, data_file, offset=data.tell(), length=array.nbytes)
            data.write(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            return tensor

        for tensor in graph.initializer:
            if tensor.name in weights:
                array = read(tensor)
                scale = np.abs(array).max(axis=0) / 127  # [K, N] weights: one scale per output column
                scale[scale == 0] = 1
                initializers.append(stored(f"{tensor.name}/int8", np.rint(array / scale).astype(np.int8)))
                initializers.append(stored(f"{tensor.name}/scale", scale.astype(np.float32)))
                if tensor.name not in used_elsewhere:
                    continue
            if tensor.name in shared:
                del tensor.external_data[:]
                tensor.external_data.extend(shared[tensor.name])
                initializers.append(tensor)
            elif uses_external_data(tensor):
                initializers.append(stored(tensor.name, read(tensor)))
            else:
                initializers.append(tensor)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            node.op_type, node.domain = "DynamicQuantizeMatMul", "com.microsoft"
            node.input[:] = [node.input[0], f"{node.input[1]}/int8", f"{node.input[1]}/scale"]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save(model, str(out_dir / INT8_FILE))


def last_logits_only(model_file: Path) -> None:
    """Make the model score only the last position it reads. Generation needs no other logits, and
    for a prompt the vocabulary projection of every position is about a quarter of the work (Qwen's
    152k-token vocabulary). The bot reads prompts one at a time, so the last position is the prompt's
    end; a decoding step reads one position anyway. The weights file is left as it is."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    head = next(node for node in graph.node if "logits" in node.output)
    last = LAST_POSITION
    graph.initializer.extend(
        helper.make_tensor(f"{last}/{name}", TensorProto.INT64, [1], [value])
        for name, value in (("starts", -1), ("ends", 2**62), ("axes", 1))
    )
    index = list(graph.node).index(head)
    graph.node.insert(
        index,
        helper.make_node(
            "Slice",
            [head.input[0], f"{last}/starts", f"{last}/ends", f"{last}/axes"],
            [f"{last}/output_0"],
            name=last,
        ),
    )
    head.input[0] = f"{last}/output_0"
    logits = next(output for output in graph.output if output.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_value = 1  # was the prompt's length
    scratch = model_file.with_suffix(".tmp")
    onnx.save(model, str(scratch))
    os.replace(scratch, model_file)


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


if __name__ == "__main__":  # export_onnx runs the quantizer as its own process: python -m bot.models.export FP32 INT4
    quantize_int4(Path(sys.argv[1]), Path(sys.argv[2]))
