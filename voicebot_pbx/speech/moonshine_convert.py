"""Converting a shipped Moonshine model (ORT format, int8 weights expanded at run time, one
merged decoder) once, at install time, into the ONNX folder ``speech/moonshine.py`` runs
fastest: :func:`convert_moonshine`.

Why: the Moonshine base model of ``moonshine-cpp`` stores its weights as int8 + scale +
zero point and expands them with ``Cast``/``Mul``/``Add`` inside the graph, and the merged
decoder transposes the whole token embedding for the logits; onnxruntime does not fold
either in an ORT-format model (nor inside the ``If`` branches), so every decoder step
redoes it (~2.4 CPU-s per utterance). The conversion:

1. reads each ``.ort`` file into an ONNX model (``speech/ort_reader.py``; an ``.onnx``
   source is read as is);
2. splits the merged decoder at its ``If`` on ``use_cache_branch``: ``decoder_first.onnx``
   is the else branch (no past inputs; outputs ``logits`` and every ``present.*``) and
   ``decoder_with_past.onnx`` the then branch (past inputs; outputs ``logits`` and
   ``present.*.decoder.*``: its ``present.*.encoder.*`` are empty placeholders, the
   cross-attention cache comes from the first step);
3. folds the constant expansions (:data:`FOLDABLE_OPS` on initializers only: the weight
   dequantisation, the embedding transpose) into float initializers and drops what is no
   longer used;
4. quantises the ``MatMul`` and embedding (``Gather``) weights again with onnxruntime's
   dynamic int8 quantisation (:data:`QUANTIZE_OP_TYPES`, :data:`QUANTIZE_PER_CHANNEL`; the
   ``MatMul``s then run as ``MatMulInteger`` on int8 weights instead of float).

The output is byte-for-byte the same on every run (the install pins its hashes); it is
written to a temporary folder next to ``out_dir`` and renamed into place. The tokenizer is
not part of it (``moonshine-tokenizer`` in the models manifest)::

    python -m voicebot_pbx.speech.moonshine_convert SOURCE_DIR OUT_DIR

Install-time only: needs ``onnx`` (and onnxruntime's quantisation tools), never imported
by the service.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from voicebot_pbx.models import sha256_file
from voicebot_pbx.speech.moonshine import (
    DECODER_FIRST_NAME,
    DECODER_NAMES,
    DECODER_WITH_PAST_NAME,
    ENCODER_NAMES,
    MoonshineModelError,
    find_model_file,
)
from voicebot_pbx.speech.ort_reader import OrtModelError, read_ort_model

ENCODER_OUT_NAME = "encoder_model.onnx"
OUTPUT_NAMES = (ENCODER_OUT_NAME, DECODER_FIRST_NAME, DECODER_WITH_PAST_NAME)
CACHE_FLAG = "use_cache_branch"
# The ops a constant expansion of a weight is made of; a node of these whose inputs are all
# initializers is computed here (numpy, float32 like onnxruntime's kernels).
FOLDABLE_OPS = ("Cast", "Add", "Sub", "Mul", "Div", "DequantizeLinear", "Transpose", "Identity")
# Measured on the 150 recorded prompts (bench/bench_stt.py, base): float 7.4 % WER at
# 0.120 CPU-s/utt; MatMul int8 per tensor 7.6 % at 0.065, per channel 7.7 % at 0.060,
# uint8 weights 7.1 % at 0.084, reduce_range 8.1 % at 0.068; + Gather (the token
# embedding) the same transcripts, 41 MB less per decoder file; + Conv 12.4 % at 0.103.
QUANTIZE_OP_TYPES = ("MatMul", "Gather")
QUANTIZE_PER_CHANNEL = False
_CROSS_PRESENT = re.compile(r"^present\.\d+\.encoder\.(key|value)$")

Array = npt.NDArray[np.generic]


def convert_moonshine(source_dir: Path, out_dir: Path) -> dict[str, str]:
    """Convert the Moonshine model in ``source_dir`` (``encoder_model.ort|.onnx`` and
    ``decoder_model_merged.ort|.onnx``) into ``out_dir`` (:data:`OUTPUT_NAMES`, replaced
    as a whole); returns each written file's name -> sha256. :class:`MoonshineModelError`
    naming the file when a source file is missing or not such a model."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise MoonshineModelError(f"Moonshine source folder {source_dir} does not exist")
    encoder_path = find_model_file(source_dir, ENCODER_NAMES)
    decoder_path = find_model_file(source_dir, DECODER_NAMES)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        work.chmod(0o755)  # mkdtemp's is 0700: the service's user reads the models
        hashes = {}
        for name, model in _converted(encoder_path, decoder_path):
            quantize(model, work / name)
            hashes[name] = sha256_file(work / name)
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return hashes


def _converted(encoder_path: Path, decoder_path: Path) -> Iterator[tuple[str, onnx.ModelProto]]:
    """The output models before quantisation, one at a time (less memory at once)."""
    yield ENCODER_OUT_NAME, prune(fold_constants(_load(encoder_path)))
    first, with_past = split_merged_decoder(_load(decoder_path), decoder_path)
    yield DECODER_FIRST_NAME, prune(fold_constants(first))
    del first
    yield DECODER_WITH_PAST_NAME, prune(fold_constants(with_past))


def _load(path: Path) -> onnx.ModelProto:
    try:
        if path.suffix == ".ort":
            return read_ort_model(path)
        return onnx.load_model(str(path))
    except OrtModelError as exc:
        raise MoonshineModelError(str(exc)) from None
    except Exception as exc:  # onnx raises DecodeError and friends on a corrupt file
        raise MoonshineModelError(f"{path}: not a readable ONNX model ({exc})") from None


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first (a rename
    cannot replace a non-empty folder) and removed once the new one is in place."""
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old)


# --- decoder split -------------------------------------------------------------------


def split_merged_decoder(
    model: onnx.ModelProto, path: Path | str = "decoder"
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(first-step, with-past) decoders from a merged one: the ``If`` on
    ``use_cache_branch`` is replaced by its else or then branch, inlined in the main graph."""
    graph = model.graph
    flags = [node for node in graph.node if node.op_type == "If"]
    inputs = {i.name for i in graph.input}
    if len(flags) != 1 or flags[0].input[0] != CACHE_FLAG or CACHE_FLAG not in inputs:
        raise MoonshineModelError(
            f"{path}: not a merged Moonshine decoder (no single If on {CACHE_FLAG})"
        )
    branches = {attr.name: attr.g for attr in flags[0].attribute}
    if set(branches) != {"then_branch", "else_branch"}:
        raise MoonshineModelError(f"{path}: the If node has no then/else branches")
    outputs = [o.name for o in graph.output]
    first = _inline(model, flags[0], branches["else_branch"], outputs, "decoder_first")
    kept = [name for name in outputs if not _CROSS_PRESENT.match(name)]
    with_past = _inline(model, flags[0], branches["then_branch"], kept, "decoder_with_past")
    return first, with_past


def _inline(
    model: onnx.ModelProto,
    flag: onnx.NodeProto,
    branch: onnx.GraphProto,
    outputs: Sequence[str],
    name: str,
) -> onnx.ModelProto:
    graph = model.graph
    nodes = [node for node in graph.node if node is not flag] + list(branch.node)
    for if_output, branch_output in zip(flag.output, branch.output, strict=True):
        if if_output != branch_output.name:
            nodes.append(helper.make_node("Identity", [branch_output.name], [if_output]))
    value_infos = {o.name: o for o in graph.output}
    new_graph = helper.make_graph(
        nodes,
        name,
        [i for i in graph.input if i.name != CACHE_FLAG],
        [value_infos[o] for o in outputs],
        initializer=[*graph.initializer, *branch.initializer],
    )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(new_graph)
    return out


# --- constant folding and pruning -----------------------------------------------------------


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph nodes of :data:`FOLDABLE_OPS` with only
    initializer inputs are replaced by their result as an initializer (repeatedly, in
    graph order: a ``Cast`` -> ``Mul`` -> ``Add`` chain becomes one float initializer).
    Nodes producing a graph output and nodes in subgraphs are left alone."""
    graph = model.graph
    values: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    arrays: dict[str, Array] = {}
    computed: list[str] = []
    graph_outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in _topological(graph):
        inputs = [name for name in node.input if name]
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type in FOLDABLE_OPS
            and len(node.output) == 1
            and node.output[0] not in graph_outputs
            and inputs
            and all(name in values or name in arrays for name in inputs)
        ):
            args = [_array(name, values, arrays) for name in node.input]
            result = _EVALUATORS[node.op_type](node, args)
            if result is not None:
                arrays[node.output[0]] = result
                computed.append(node.output[0])
                continue
        kept.append(node)
    used = set().union(*(_node_inputs(node) for node in kept)) | graph_outputs
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(
        numpy_helper.from_array(arrays[name], name) for name in computed if name in used
    )
    return out


def _array(name: str, values: dict[str, onnx.TensorProto], arrays: dict[str, Array]) -> Array:
    if name == "":
        return np.empty(0)  # an absent optional input
    if name not in arrays:  # an initializer of the model, read once
        arrays[name] = numpy_helper.to_array(values[name])
    return arrays[name]


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _cast(node: onnx.NodeProto, args: list[Array]) -> Array | None:
    to = _attr_int(node, "to", 0)
    if args[0].dtype == np.dtype(object) or to == onnx.TensorProto.STRING:
        return None
    return np.asarray(args[0].astype(helper.tensor_dtype_to_np_dtype(to)))


def _binary(op: Callable[[Array, Array], Array], *, float_only: bool = False) -> _Evaluator:
    def evaluate(node: onnx.NodeProto, args: list[Array]) -> Array | None:
        a, b = args
        if a.dtype != b.dtype or (float_only and a.dtype.kind != "f"):
            return None  # not a valid ONNX node, or integer division (rounds differently)
        return np.asarray(op(a, b), dtype=a.dtype)

    return evaluate


def _dequantize(node: onnx.NodeProto, args: list[Array]) -> Array | None:
    if any(attr.name == "block_size" and attr.i for attr in node.attribute):
        return None
    x, scale = args[0], args[1]
    zero = args[2] if len(args) > 2 and args[2].size else np.zeros((), x.dtype)
    if x.dtype.kind not in "iu" or scale.dtype != np.float32:
        return None
    if scale.ndim == 1 and scale.size > 1:  # per axis
        axis = _attr_int(node, "axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    shifted = (x.astype(np.int32) - zero.astype(np.int32)).astype(np.float32)
    return np.asarray(shifted * scale.astype(np.float32), dtype=np.float32)


def _transpose(node: onnx.NodeProto, args: list[Array]) -> Array | None:
    perm = next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None)
    return np.ascontiguousarray(np.transpose(args[0], perm))


_Evaluator = Callable[[onnx.NodeProto, list[Array]], Array | None]
_EVALUATORS: dict[str, _Evaluator] = {
    "Cast": _cast,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide, float_only=True),
    "DequantizeLinear": _dequantize,
    "Transpose": _transpose,
    "Identity": lambda _node, args: args[0],
}


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` keeping only the nodes, initializers and graph inputs its
    outputs need, nodes in a stable topological order."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(_topological(graph)):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(_node_inputs(node))
    kept.reverse()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in needed]
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    inputs = [i for i in graph.input if i.name in needed]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    return out


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name the node reads: its inputs and what its subgraphs take from outside."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            for inner in sub.node:
                names |= _node_inputs(inner)
            names.update(o.name for o in sub.output)
    return names


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The main graph's nodes in an order where each comes after its producers, the stored
    order kept where it already is one (deterministic)."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    order: list[onnx.NodeProto] = []
    state = [0] * len(graph.node)  # 0 new, 1 in progress, 2 placed
    for root in range(len(graph.node)):
        stack = [(root, False)]
        while stack:
            index, expanded = stack.pop()
            if expanded:
                state[index] = 2
                order.append(graph.node[index])
                continue
            if state[index] == 2:
                continue
            if state[index] == 1:
                raise MoonshineModelError(
                    f"graph {graph.name}: a cycle through {graph.node[index].name}"
                )
            state[index] = 1
            stack.append((index, True))
            deps = sorted(
                {producer[n] for n in _node_inputs(graph.node[index]) if n in producer} - {index},
                reverse=True,
            )
            stack.extend((dep, False) for dep in deps if state[dep] != 2)
    return order


# --- quantisation ----------------------------------------------------------------------------


def quantize(model: onnx.ModelProto, path: Path) -> None:
    """onnxruntime dynamic quantisation of :data:`QUANTIZE_OP_TYPES` (int8 weights,
    activations quantised per call), written to ``path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It advises "pre-processing" on the root logger for every model: not needed here (the
    # graphs are already folded and shape-inferred), and noise in the install's output.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model,
            path,
            op_types_to_quantize=list(QUANTIZE_OP_TYPES),
            per_channel=QUANTIZE_PER_CHANNEL,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0].startswith("-"):
        print(
            "usage: python -m voicebot_pbx.speech.moonshine_convert SOURCE_DIR OUT_DIR\n"
            "  SOURCE_DIR holds encoder_model.ort and decoder_model_merged.ort",
            file=sys.stderr,
        )
        return 2
    try:
        hashes = convert_moonshine(Path(args[0]), Path(args[1]))
    except MoonshineModelError as exc:
        print(f"moonshine_convert: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(hashes, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
