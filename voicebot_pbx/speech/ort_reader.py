"""Reading an onnxruntime ORT-format model (``.ort``, a flatbuffer) back into an ONNX
``ModelProto``: :func:`read_ort_model`.

Uses the flatbuffer classes onnxruntime ships (``onnxruntime/tools/ort_format_model``);
``onnx`` is needed (install-time tools only, never at run time). What is carried over: the
graph (nodes in the stored order, attributes including the subgraphs of ``If``/``Loop``/
``Scan``, initializers, inputs and outputs with their types and shapes), the opset imports
of the domains the nodes use, the IR version and the producer. What is not: ORT's
kernel/optimisation records (an ONNX runtime redoes them), the types of intermediate
values (shape inference recomputes them), and the parts ORT-format models of plain
ONNX graphs do not use; a model that needs them (sparse initializers, fused nodes,
initializers stored outside the file) is refused with :class:`OrtModelError`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

# ORT TensorDataType and AttributeType values are ONNX's (same enums in the schema).
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_TENSOR, _ATTR_GRAPH = 1, 2, 3, 4, 5
_ATTR_FLOATS, _ATTR_INTS, _ATTR_STRINGS, _ATTR_TENSORS, _ATTR_GRAPHS = 6, 7, 8, 9, 10
_TYPE_TENSOR, _TYPE_SEQUENCE, _TYPE_MAP = 1, 2, 3
_DIM_VALUE, _DIM_PARAM = 1, 2
_NODE_FUSED = 1
_STRING = onnx.TensorProto.STRING


class OrtModelError(ValueError):
    """The file is not an ORT-format model, or uses something this reader does not map."""


def _fbs() -> Any:
    """The flatbuffer classes: onnxruntime's tools package puts their folder on sys.path
    (they import each other as the top-level package ``ort_flatbuffers_py``)."""
    importlib.import_module("onnxruntime.tools.ort_format_model")
    return importlib.import_module("ort_flatbuffers_py.fbs.InferenceSession")


def read_ort_model(path: Path) -> onnx.ModelProto:
    """The ONNX model stored in the ORT-format file ``path``; :class:`OrtModelError` naming
    the file when it is not one (``OSError`` when it cannot be read)."""
    data = bytearray(Path(path).read_bytes())
    session_cls = _fbs().InferenceSession
    try:
        if len(data) < 8 or not session_cls.InferenceSessionBufferHasIdentifier(data, 0):
            raise OrtModelError("no ORT-format header")
        return _model(session_cls.GetRootAs(data, 0).Model())
    except OrtModelError as exc:
        raise OrtModelError(f"{path}: not a usable ORT-format model ({exc})") from None
    except Exception as exc:  # a corrupt flatbuffer fails anywhere while being walked
        raise OrtModelError(
            f"{path}: corrupt ORT-format model ({type(exc).__name__}: {exc})"
        ) from None


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8")


def _model(fb_model: Any) -> onnx.ModelProto:
    if fb_model is None or fb_model.Graph() is None:
        raise OrtModelError("no model graph")
    graph = _graph(fb_model.Graph(), "main_graph")
    versions: dict[str, int] = {}
    for i in range(fb_model.OpsetImportLength()):
        opset = fb_model.OpsetImport(i)
        versions[_text(opset.Domain())] = int(opset.Version())
    used = _domains(graph) | {""}
    missing = used - versions.keys()
    if missing:
        raise OrtModelError(f"no opset import for domain(s) {sorted(missing)}")
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, versions[domain]) for domain in sorted(used)],
        producer_name=_text(fb_model.ProducerName()),
        producer_version=_text(fb_model.ProducerVersion()),
    )
    model.ir_version = int(fb_model.IrVersion())
    if fb_model.DocString():
        model.doc_string = _text(fb_model.DocString())
    for i in range(fb_model.MetadataPropsLength()):
        entry = fb_model.MetadataProps(i)
        model.metadata_props.add(key=_text(entry.Key()), value=_text(entry.Value()))
    return model


def _domains(graph: onnx.GraphProto) -> set[str]:
    found: set[str] = set()
    for node in graph.node:
        found.add(node.domain)
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                found |= _domains(sub)
    return found


def _graph(fb_graph: Any, name: str) -> onnx.GraphProto:
    if fb_graph.SparseInitializersLength():
        raise OrtModelError(f"graph {name}: sparse initializers are not supported")
    types = {}
    for i in range(fb_graph.NodeArgsLength()):
        arg = fb_graph.NodeArgs(i)
        types[_text(arg.Name())] = arg
    initializers = [_tensor(fb_graph.Initializers(i)) for i in range(fb_graph.InitializersLength())]
    constant = {t.name for t in initializers}
    inputs = [_text(fb_graph.Inputs(i)) for i in range(fb_graph.InputsLength())]
    outputs = [_text(fb_graph.Outputs(i)) for i in range(fb_graph.OutputsLength())]
    nodes = [_node(fb_graph.Nodes(i)) for i in range(fb_graph.NodesLength())]
    return helper.make_graph(
        nodes,
        name,
        # ONNX IR >= 4: initializers are not graph inputs unless they may be overridden.
        [_value_info(n, types.get(n)) for n in inputs if n not in constant],
        [_value_info(n, types.get(n)) for n in outputs],
        initializer=initializers,
    )


def _value_info(name: str, arg: Any) -> onnx.ValueInfoProto:
    info = onnx.ValueInfoProto(name=name)
    if arg is not None and arg.Type() is not None:
        info.type.CopyFrom(_type(arg.Type(), name))
        if arg.DocString():
            info.doc_string = _text(arg.DocString())
    return info


def _type(fb_type: Any, name: str) -> onnx.TypeProto:
    fbs_root = "ort_flatbuffers_py.fbs"
    kind = int(fb_type.ValueType())
    table = fb_type.Value()
    out = onnx.TypeProto()
    if fb_type.Denotation():
        out.denotation = _text(fb_type.Denotation())
    if kind == _TYPE_TENSOR:
        tensor = importlib.import_module(f"{fbs_root}.TensorTypeAndShape").TensorTypeAndShape()
        tensor.Init(table.Bytes, table.Pos)
        out.tensor_type.elem_type = int(tensor.ElemType())
        shape = tensor.Shape()
        if shape is not None:
            out.tensor_type.shape.SetInParent()  # a known rank, even 0
            for i in range(shape.DimLength()):
                dim = out.tensor_type.shape.dim.add()
                value = shape.Dim(i).Value()
                if value is None:
                    continue
                if int(value.DimType()) == _DIM_VALUE:
                    dim.dim_value = int(value.DimValue())
                elif int(value.DimType()) == _DIM_PARAM:
                    dim.dim_param = _text(value.DimParam())
        return out
    if kind == _TYPE_SEQUENCE:
        seq = importlib.import_module(f"{fbs_root}.SequenceType").SequenceType()
        seq.Init(table.Bytes, table.Pos)
        out.sequence_type.elem_type.CopyFrom(_type(seq.ElemType(), name))
        return out
    if kind == _TYPE_MAP:
        mapping = importlib.import_module(f"{fbs_root}.MapType").MapType()
        mapping.Init(table.Bytes, table.Pos)
        out.map_type.key_type = int(mapping.KeyType())
        out.map_type.value_type.CopyFrom(_type(mapping.ValueType(), name))
        return out
    raise OrtModelError(f"value {name}: unknown type kind {kind}")


def _tensor(fb_tensor: Any) -> onnx.TensorProto:
    name = _text(fb_tensor.Name())
    data_type = int(fb_tensor.DataType())
    dims = [] if fb_tensor.DimsIsNone() else [int(d) for d in fb_tensor.DimsAsNumpy()]
    tensor = onnx.TensorProto(name=name, data_type=data_type, dims=dims)
    if fb_tensor.DocString():
        tensor.doc_string = _text(fb_tensor.DocString())
    count = int(np.prod(dims, dtype=np.int64))
    if data_type == _STRING:
        if fb_tensor.StringDataLength() != count:
            raise OrtModelError(f"initializer {name}: {fb_tensor.StringDataLength()} strings")
        tensor.string_data.extend(fb_tensor.StringData(i) for i in range(count))
        return tensor
    if fb_tensor.RawDataIsNone() and fb_tensor.ExternalDataOffset() >= 0:
        raise OrtModelError(f"initializer {name}: external data is not supported")
    raw = b"" if fb_tensor.RawDataIsNone() else fb_tensor.RawDataAsNumpy().tobytes()
    try:
        item_bytes = helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except KeyError:
        raise OrtModelError(f"initializer {name}: unknown data type {data_type}") from None
    if len(raw) != count * item_bytes:
        raise OrtModelError(f"initializer {name}: {len(raw)} bytes for shape {dims}")
    tensor.raw_data = raw
    return tensor


def _node(fb_node: Any) -> onnx.NodeProto:
    name = _text(fb_node.Name())
    if int(fb_node.Type()) == _NODE_FUSED:
        raise OrtModelError(f"node {name}: fused (compiled) nodes are not supported")
    node = helper.make_node(
        _text(fb_node.OpType()),
        [_text(fb_node.Inputs(i)) for i in range(fb_node.InputsLength())],
        [_text(fb_node.Outputs(i)) for i in range(fb_node.OutputsLength())],
        name=name,
        domain=_text(fb_node.Domain()),
    )
    if fb_node.DocString():
        node.doc_string = _text(fb_node.DocString())
    node.attribute.extend(
        _attribute(fb_node.Attributes(i), name) for i in range(fb_node.AttributesLength())
    )
    return node


def _attribute(fb_attr: Any, node_name: str) -> onnx.AttributeProto:
    name = _text(fb_attr.Name())
    kind = int(fb_attr.Type())
    where = f"{node_name}.{name}"
    if not _ATTR_FLOAT <= kind <= _ATTR_GRAPHS:  # sparse tensors or unknown
        raise OrtModelError(f"attribute {where}: type {kind} is not supported")
    attr = onnx.AttributeProto(name=name, type=onnx.AttributeProto.AttributeType.Name(kind))
    if fb_attr.DocString():
        attr.doc_string = _text(fb_attr.DocString())
    if kind == _ATTR_FLOAT:
        attr.f = float(fb_attr.F())
    elif kind == _ATTR_INT:
        attr.i = int(fb_attr.I())
    elif kind == _ATTR_STRING:
        attr.s = fb_attr.S() or b""
    elif kind == _ATTR_TENSOR:
        attr.t.CopyFrom(_tensor(fb_attr.T()))
    elif kind == _ATTR_GRAPH:
        attr.g.CopyFrom(_graph(fb_attr.G(), where))
    elif kind == _ATTR_FLOATS:
        attr.floats.extend(float(fb_attr.Floats(i)) for i in range(fb_attr.FloatsLength()))
    elif kind == _ATTR_INTS:
        attr.ints.extend(int(fb_attr.Ints(i)) for i in range(fb_attr.IntsLength()))
    elif kind == _ATTR_STRINGS:
        attr.strings.extend(fb_attr.Strings(i) for i in range(fb_attr.StringsLength()))
    elif kind == _ATTR_TENSORS:
        attr.tensors.extend(_tensor(fb_attr.Tensors(i)) for i in range(fb_attr.TensorsLength()))
    else:  # _ATTR_GRAPHS
        attr.graphs.extend(
            _graph(fb_attr.Graphs(i), f"{where}.{i}") for i in range(fb_attr.GraphsLength())
        )
    return attr
