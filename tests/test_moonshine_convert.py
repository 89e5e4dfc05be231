"""The Moonshine install-time conversion (speech/ort_reader.py, speech/moonshine_convert.py)
and the engine's split-decoder layout.

Most tests use a toy "Moonshine" built here (an encoder and a merged decoder with the real
graphs' names, int8 weights expanded in-graph), saved in ORT format by onnxruntime; the
last ones convert the real base model of moonshine-cpp (skipped when it is not installed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.speech import have_espeak
from tests.test_moonshine import UTTERANCES
from tests.test_stt import caller, words
from voicebot_pbx.models import (
    MOONSHINE_BASE_EN,
    converted_root,
    load_converted,
    model_path,
    sha256_file,
    verify_converted,
)
from voicebot_pbx.speech.expect import Expectation
from voicebot_pbx.speech.moonshine import (
    DECODER_FIRST_NAME,
    DECODER_WITH_PAST_NAME,
    MoonshineEngine,
    MoonshineModelError,
    trim_quiet_ends,
)
from voicebot_pbx.speech.moonshine_convert import (
    OUTPUT_NAMES,
    convert_moonshine,
    fold_constants,
    main,
    prune,
    split_merged_decoder,
)
from voicebot_pbx.speech.ort_reader import OrtModelError, read_ort_model
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.speech.stt_load import load_stt

D, V = 4, 8  # toy hidden size and vocabulary
OPSET = 17
F32 = npt.NDArray[np.float32]


# --- the toy model ---------------------------------------------------------------------------


def _const(name: str, value: npt.ArrayLike, dtype: type[np.generic]) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def toy_encoder() -> onnx.ModelProto:
    """input_values [batch, samples] -> [batch, samples/4, 4] @ W -> LeakyRelu; W is int8
    expanded in-graph as Cast -> Mul(scale) -> Add(offset), like the base model's."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Reshape", ["input_values", "frame_shape"], ["frames"]),
        helper.make_node("Cast", ["w_q"], ["w_cast"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w_cast", "w_scale"], ["w_mul"]),
        helper.make_node("Add", ["w_mul", "w_offset"], ["w"]),
        helper.make_node("MatMul", ["frames", "w"], ["projected"]),
        helper.make_node("LeakyRelu", ["projected"], ["last_hidden_state"], alpha=0.25),
    ]
    inits = [
        _const("frame_shape", [0, -1, D], np.int64),
        _const("w_q", rng.integers(-127, 128, (D, D)), np.int8),
        _const("w_scale", [0.02], np.float32),
        _const("w_offset", [0.01], np.float32),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_encoder",
        [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "t", D])],
        initializer=inits,
    )
    return _model(graph)


def _past(kind: str, part: str) -> str:
    return f"past_key_values.0.{kind}.{part}"


def toy_decoder() -> onnx.ModelProto:
    """A merged decoder: If(use_cache_branch) over a first-step and a with-past branch;
    logits = (embedding + encoder context + self-attention "cache") @ W, W int8 through
    DequantizeLinear outside the If, the embedding a plain initializer read inside it."""
    rng = np.random.default_rng(2)
    unsq = "axis1"

    def out(name: str, shape: list[str | int] | None = None) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    presents = [f"present.0.{k}.{p}" for k in ("decoder", "encoder") for p in ("key", "value")]
    first = helper.make_graph(
        [
            helper.make_node("Gather", ["embed", "input_ids"], ["f_emb"], axis=0),
            helper.make_node(
                "ReduceMean", ["encoder_hidden_states"], ["f_ctx"], axes=[1], keepdims=1
            ),
            helper.make_node("Add", ["f_emb", "f_ctx"], ["f_h"]),
            helper.make_node("MatMul", ["f_h", "w"], ["f_logits"]),
            helper.make_node("Unsqueeze", ["f_emb", unsq], ["f_dk"]),
            helper.make_node("Unsqueeze", ["f_h", unsq], ["f_dv"]),
            helper.make_node("Unsqueeze", ["encoder_hidden_states", unsq], ["f_ek"]),
            helper.make_node("Unsqueeze", ["f_ctx", unsq], ["f_ev"]),
        ],
        "first",
        [],
        [out(n) for n in ("f_logits", "f_dk", "f_dv", "f_ek", "f_ev")],
    )
    empty = [_const(f"p_{p}", np.zeros((0, 1, 1, D)), np.float32) for p in ("ek", "ev")]
    with_past = helper.make_graph(
        [
            helper.make_node("Gather", ["embed", "input_ids"], ["p_emb"], axis=0),
            helper.make_node(
                "ReduceMean", [_past("encoder", "value")], ["p_ctx"], axes=[2], keepdims=0
            ),
            helper.make_node(
                "ReduceMean", [_past("decoder", "value")], ["p_self"], axes=[2], keepdims=0
            ),
            helper.make_node("Add", ["p_emb", "p_ctx"], ["p_h0"]),
            helper.make_node("Add", ["p_h0", "p_self"], ["p_h"]),
            helper.make_node("MatMul", ["p_h", "w"], ["p_logits"]),
            helper.make_node("Unsqueeze", ["p_emb", unsq], ["p_new_k"]),
            helper.make_node("Unsqueeze", ["p_h", unsq], ["p_new_v"]),
            helper.make_node("Concat", [_past("decoder", "key"), "p_new_k"], ["p_dk"], axis=2),
            helper.make_node("Concat", [_past("decoder", "value"), "p_new_v"], ["p_dv"], axis=2),
        ],
        "with_past",
        [],
        [out(n) for n in ("p_logits", "p_dk", "p_dv", "p_ek", "p_ev")],
        initializer=empty,
    )
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
        helper.make_node(
            "If",
            ["use_cache_branch"],
            ["logits", *presents],
            then_branch=with_past,
            else_branch=first,
        ),
    ]
    past_shape: list[str | int] = ["batch", 1, "past", D]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "n"]),
        helper.make_tensor_value_info(
            "encoder_hidden_states", TensorProto.FLOAT, ["batch", "t", D]
        ),
        *(
            helper.make_tensor_value_info(_past(k, p), TensorProto.FLOAT, past_shape)
            for k in ("decoder", "encoder")
            for p in ("key", "value")
        ),
        helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]),
    ]
    outputs = [out("logits", ["batch", "n", V])] + [
        out(n, ["batch", 1, "len", D]) for n in presents
    ]
    inits = [
        _const("w_q", rng.integers(-127, 128, (D, V)), np.int8),
        _const("w_scale", 0.03, np.float32),
        _const("w_zero", 3, np.int8),
        _const("embed", rng.normal(0, 1, (V, D)), np.float32),
        _const(unsq, [1], np.int64),
    ]
    return _model(helper.make_graph(nodes, "toy_decoder", inputs, outputs, initializer=inits))


def save_ort(model: onnx.ModelProto, path: Path) -> Path:
    """``model`` saved by onnxruntime in ORT format at ``path`` (graph left as it is)."""
    source = path.with_suffix(".src.onnx")
    onnx.save_model(model, str(source))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.optimized_model_filepath = str(path)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    source.unlink()
    return path


def toy_source(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_ort(toy_encoder(), folder / "encoder_model.ort")
    save_ort(toy_decoder(), folder / "decoder_model_merged.ort")
    return folder


def toy_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(path))
    return path


def run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, Path) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return list(session.run(None, {k: v for k, v in feed.items() if k in names}))


def decoder_feeds(flag: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    past_len = 3 if flag else 0

    def f32(*shape: int) -> F32:
        return rng.normal(0, 1, shape).astype(np.float32)

    return {
        "input_ids": np.array([[5, 2]], dtype=np.int64),
        "encoder_hidden_states": f32(1, 6, D),
        _past("decoder", "key"): f32(1, 1, past_len, D),
        _past("decoder", "value"): f32(1, 1, past_len, D),
        _past("encoder", "key"): f32(1, 1, 6, D),
        _past("encoder", "value"): f32(1, 1, 1, D),
        "use_cache_branch": np.array([flag]),
    }


# --- the ORT reader --------------------------------------------------------------------------


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def test_reader_round_trips_nodes_initializers_and_if_branches(tmp_path: Path) -> None:
    original = toy_decoder()
    read = read_ort_model(save_ort(original, tmp_path / "decoder.ort"))
    onnx.checker.check_model(read)
    assert _ops(read.graph) == _ops(original.graph) == ["DequantizeLinear", "If"]
    branches = {a.name: a.g for a in read.graph.node[1].attribute}
    for attr in original.graph.node[1].attribute:
        assert _ops(branches[attr.name]) == _ops(attr.g)
        assert [o.name for o in branches[attr.name].output] == [o.name for o in attr.g.output]
        # attributes (ints, int, graph outputs' names) survive
        for got, want in zip(branches[attr.name].node, attr.g.node, strict=True):
            assert list(got.input) == list(want.input)
            assert {a.name: helper.get_attribute_value(a) for a in got.attribute} == {
                a.name: helper.get_attribute_value(a) for a in want.attribute
            }
    init = {t.name: numpy_helper.to_array(t) for t in read.graph.initializer}
    for tensor in original.graph.initializer:
        np.testing.assert_array_equal(init[tensor.name], numpy_helper.to_array(tensor))
        assert init[tensor.name].dtype == numpy_helper.to_array(tensor).dtype
    assert [i.name for i in read.graph.input] == [i.name for i in original.graph.input]
    assert [i.type for i in read.graph.input] == [i.type for i in original.graph.input]
    # (onnxruntime stores the output shapes it inferred: element types and ranks are ours)
    assert [
        (o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim)) for o in read.graph.output
    ] == [
        (o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim))
        for o in original.graph.output
    ]
    assert {(o.domain, o.version) for o in read.opset_import} == {("", OPSET)}
    for flag in (False, True):
        for got, want in zip(
            run(read, decoder_feeds(flag)), run(original, decoder_feeds(flag)), strict=True
        ):
            np.testing.assert_array_equal(got, want)


def test_reader_keeps_float_attributes(tmp_path: Path) -> None:
    read = read_ort_model(save_ort(toy_encoder(), tmp_path / "encoder.ort"))
    leaky = next(n for n in read.graph.node if n.op_type == "LeakyRelu")
    assert helper.get_attribute_value(leaky.attribute[0]) == pytest.approx(0.25)


def test_reader_refuses_what_is_not_an_ort_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ort"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(OrtModelError, match="junk.ort"):
        read_ort_model(junk)
    onnx_file = tmp_path / "plain.ort"
    onnx.save_model(toy_encoder(), str(onnx_file))  # an ONNX file with the wrong name
    with pytest.raises(OrtModelError, match="plain.ort"):
        read_ort_model(onnx_file)
    good = save_ort(toy_decoder(), tmp_path / "decoder.ort").read_bytes()
    cut = tmp_path / "cut.ort"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(OrtModelError, match="cut.ort"):
        read_ort_model(cut)


# --- folding and the split -------------------------------------------------------------------


def test_folding_expands_int8_weights_into_float_initializers(tmp_path: Path) -> None:
    for original, feed in (
        (toy_encoder(), {"input_values": np.linspace(-1, 1, 32, dtype=np.float32)[None]}),
        (toy_decoder(), decoder_feeds(True)),
    ):
        read = read_ort_model(save_ort(original, tmp_path / "model.ort"))
        folded = prune(fold_constants(read))
        ops = _ops(folded.graph)
        assert not {"Cast", "Mul", "DequantizeLinear"} & set(ops), ops
        weight = next(t for t in folded.graph.initializer if t.name == "w")
        assert weight.data_type == TensorProto.FLOAT
        names = {t.name for t in folded.graph.initializer}
        assert "w_q" not in names and "w_scale" not in names  # no longer used
        # the same numbers as onnxruntime's own expansion
        inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
        if "w_zero" in inits:
            want = (inits["w_q"].astype(np.float32) - 3) * np.float32(0.03)
        else:
            want = inits["w_q"].astype(np.float32) * np.float32(0.02) + np.float32(0.01)
        np.testing.assert_array_equal(numpy_helper.to_array(weight), want)
        for got, expected in zip(run(folded, feed), run(original, feed), strict=True):
            np.testing.assert_array_equal(got, expected)


def test_split_decoder_matches_the_merged_one(tmp_path: Path) -> None:
    merged = toy_decoder()
    read = read_ort_model(save_ort(merged, tmp_path / "decoder.ort"))
    first, with_past = (prune(fold_constants(m)) for m in split_merged_decoder(read))
    assert [i.name for i in first.graph.input] == ["input_ids", "encoder_hidden_states"]
    assert [o.name for o in first.graph.output] == [o.name for o in merged.graph.output]
    assert [i.name for i in with_past.graph.input] == [
        "input_ids",
        _past("decoder", "key"),
        _past("decoder", "value"),
        _past("encoder", "value"),  # what the branch reads, no more
    ]
    assert [o.name for o in with_past.graph.output] == [
        "logits",
        "present.0.decoder.key",
        "present.0.decoder.value",
    ]
    for graph in (first.graph, with_past.graph):
        assert "If" not in _ops(graph) and "use_cache_branch" not in {i.name for i in graph.input}
    for flag, split in ((False, first), (True, with_past)):
        got = run(split, decoder_feeds(flag))
        want = run(merged, decoder_feeds(flag))[: len(got)]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(MoonshineModelError, match="not a merged Moonshine decoder"):
        split_merged_decoder(toy_encoder(), "enc.onnx")


# --- convert_moonshine -----------------------------------------------------------------------


def test_convert_writes_three_quantized_graphs_deterministically(tmp_path: Path) -> None:
    source = toy_source(tmp_path / "src")
    out = tmp_path / "out"
    hashes = convert_moonshine(source, out)
    assert sorted(hashes) == sorted(OUTPUT_NAMES)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    assert hashes == {name: sha256_file(out / name) for name in OUTPUT_NAMES}
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    first = onnx.load_model(str(out / DECODER_FIRST_NAME))
    assert "MatMulInteger" in _ops(first.graph)  # the weights are int8 again
    assert {t.data_type for t in first.graph.initializer if t.name.startswith("w")} <= {
        TensorProto.INT8,
        TensorProto.FLOAT,  # the scale
    }
    # Close to the float model (int8 weights and activations): within 20 % RMS as a whole and
    # all but one element within 10 % of the largest (on a CPU without VNNI, onnxruntime's
    # u8s8 kernel saturates its 16-bit sums: one of the toy's 16 outputs strays there).
    want = run(toy_decoder(), decoder_feeds(False))[0]
    got = run(out / DECODER_FIRST_NAME, decoder_feeds(False))[0]
    rms = float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2)))
    assert rms < 0.2, rms
    strays = np.abs(got - want) > 0.1 * float(np.abs(want).max())
    assert int(strays.sum()) <= 1, (got, want)
    # Again, over the first output: the same bytes, the old folder replaced, nothing left.
    (out / "stale.txt").write_text("old")
    assert convert_moonshine(source, out) == hashes
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_convert_names_a_missing_or_corrupt_source_file(tmp_path: Path) -> None:
    source = tmp_path / "src"
    out = tmp_path / "out"
    with pytest.raises(MoonshineModelError, match="does not exist"):
        convert_moonshine(source, out)
    source.mkdir()
    with pytest.raises(MoonshineModelError, match="encoder_model.ort"):
        convert_moonshine(source, out)
    save_ort(toy_encoder(), source / "encoder_model.ort")
    with pytest.raises(MoonshineModelError, match="decoder_model_merged"):
        convert_moonshine(source, out)
    (source / "decoder_model_merged.ort").write_bytes(os.urandom(4096))
    with pytest.raises(MoonshineModelError, match="decoder_model_merged.ort"):
        convert_moonshine(source, out)
    (source / "decoder_model_merged.ort").unlink()
    (source / "decoder_model_merged.onnx").write_bytes(b"not a model")
    with pytest.raises(MoonshineModelError, match=r"decoder_model_merged\.onnx"):
        convert_moonshine(source, out)
    # the encoder is no merged decoder
    shutil.copy(source / "encoder_model.ort", source / "decoder_model_merged.ort")
    with pytest.raises(MoonshineModelError, match="not a merged Moonshine decoder"):
        convert_moonshine(source, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temp folder
    assert main([str(source), str(out)]) == 1
    assert main([]) == 2


# --- the engine on the split layout ---------------------------------------------------------


def _float_split(source: Path, folder: Path) -> Path:
    """The toy converted without quantisation: numbers equal to the merged model's."""
    folder.mkdir()
    shutil.copy(source / "encoder_model.ort", folder / "encoder_model.ort")
    decoder = read_ort_model(source / "decoder_model_merged.ort")
    first, with_past = (prune(fold_constants(m)) for m in split_merged_decoder(decoder))
    onnx.save_model(first, str(folder / DECODER_FIRST_NAME))
    onnx.save_model(with_past, str(folder / DECODER_WITH_PAST_NAME))
    return folder


def test_engine_split_layout_decodes_like_the_merged_one(tmp_path: Path) -> None:
    source = toy_source(tmp_path / "merged")
    tokenizer = toy_tokenizer(tmp_path / "tokenizer.json")
    merged = MoonshineEngine(source, tokenizer_path=tokenizer)
    split = MoonshineEngine(_float_split(source, tmp_path / "split"), tokenizer_path=tokenizer)
    assert not merged.split_decoder and split.split_decoder
    assert split.decoder_path.name == DECODER_FIRST_NAME
    rng = np.random.default_rng(4)
    for _ in range(3):
        audio = rng.uniform(-0.5, 0.5, 1600).astype(np.float32)
        tokens, logprobs, ended = split._generate(split._encode(audio), audio.size, 12)
        want = merged._generate(merged._encode(audio), audio.size, 12)
        want_tokens, want_logprobs, want_ended = want
        assert (tokens, ended) == (want_tokens, want_ended)
        assert len(tokens) > 1  # the cache was used
        assert logprobs == pytest.approx(want_logprobs, abs=1e-5)


def test_engine_names_a_missing_or_wrong_split_decoder(tmp_path: Path) -> None:
    source = toy_source(tmp_path / "merged")
    tokenizer = toy_tokenizer(tmp_path / "tokenizer.json")
    folder = _float_split(source, tmp_path / "split")
    (folder / DECODER_WITH_PAST_NAME).rename(tmp_path / "with_past.onnx")
    with pytest.raises(MoonshineModelError, match=DECODER_WITH_PAST_NAME):
        MoonshineEngine(folder, tokenizer_path=tokenizer)
    # the two graphs swapped
    (folder / DECODER_FIRST_NAME).rename(folder / DECODER_WITH_PAST_NAME)
    (tmp_path / "with_past.onnx").rename(folder / DECODER_FIRST_NAME)
    with pytest.raises(MoonshineModelError, match="not a first-step Moonshine decoder"):
        MoonshineEngine(folder, tokenizer_path=tokenizer)
    (folder / DECODER_FIRST_NAME).write_bytes(b"junk")
    with pytest.raises(MoonshineModelError, match=rf"{DECODER_FIRST_NAME}.*not a loadable"):
        MoonshineEngine(folder, tokenizer_path=tokenizer)


# --- the real base model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_engine() -> MoonshineEngine:
    """The packaged base model, as `[stt] engine = "moonshine"`, `model = "base"` loads it:
    converted by scripts/install_models.py, which checked its hashes against the manifest
    (a conversion that is no longer deterministic fails the install)."""
    engine = load_stt("moonshine", None, "base")
    assert isinstance(engine, MoonshineEngine)
    return engine


def test_the_installed_conversion_matches_the_manifest() -> None:
    entry = load_converted()[MOONSHINE_BASE_EN]
    assert model_path(MOONSHINE_BASE_EN) == converted_root() / MOONSHINE_BASE_EN
    assert [c.relpath for c in verify_converted(entry) if not c.ok] == []


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed for test speech")
@pytest.mark.parametrize(("text", "expected"), UTTERANCES, ids=[u[0] for u in UTTERANCES])
def test_converted_base_model_transcribes_speech(
    base_engine: MoonshineEngine, text: str, expected: set[str]
) -> None:
    assert base_engine.split_decoder
    result = base_engine.transcribe(caller(text, 8000), 8000)
    assert expected <= words(result.text), result.text
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0
    assert base_engine.transcribe(b"", 8000).text == ""


def test_quiet_ends_are_trimmed_around_the_speech() -> None:
    rate = 16000
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(rate) * 0.002).astype(np.float32)  # 1 s of line noise
    tone = (0.3 * np.sin(np.arange(rate // 2) * 2 * np.pi * 300 / rate)).astype(np.float32)
    audio = np.concatenate([noise, tone, noise])
    trimmed = trim_quiet_ends(audio, rate)
    margin = int(0.25 * rate)
    assert abs(trimmed.size - (tone.size + 2 * margin)) <= int(0.02 * rate)
    assert np.abs(trimmed).max() == np.abs(audio).max()
    # Nothing to trim: speech end to end, or too short to judge.
    assert trim_quiet_ends(tone, rate).size == tone.size
    assert trim_quiet_ends(tone[:400], rate).size == 400


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed for test speech")
def test_base_retries_the_trimmed_speech_when_it_hears_nothing(
    base_engine: MoonshineEngine,
) -> None:
    """A short phrase with a second of line noise on each side: the model ends at once on
    some such clips; the retry on the speech alone gives the words."""
    rng = np.random.default_rng(11)
    speech = np.frombuffer(caller("I want to pay my bill", 8000), dtype=np.int16)
    noise = (rng.standard_normal(8000) * 300).astype(np.int16)
    padded = np.concatenate([noise, speech, noise]).tobytes()
    heard = base_engine.transcribe(padded, 8000)
    assert {"pay", "bill"} <= words(heard.text), heard.text
    encoded: list[int] = []
    original = base_engine._encode

    def counting(audio: np.ndarray) -> object:
        encoded.append(audio.size)
        return original(audio)

    base_engine._encode = counting  # type: ignore[method-assign]
    try:
        base_engine.retry_trimmed = False
        once = base_engine.transcribe(padded, 8000)
        assert len(encoded) == 1
        base_engine.retry_trimmed = True
        again = base_engine.transcribe(padded, 8000)
        plain = len(encoded)
        base_engine.transcribe_expecting(padded, 8000, frozenset({Expectation.DATE}))
        held_encodes = len(encoded) - plain
    finally:
        base_engine._encode = original  # type: ignore[method-assign]
    # The speech is encoded once more only when the whole clip gave nothing, and only once
    # (the retry before a held decode is the same retry), on fewer samples.
    assert plain == (3 if not once.text else 2), encoded
    assert again.timing is not None and again.timing.windows == plain - 1
    assert held_encodes == (2 if not once.text else 1), encoded
    if not once.text:
        assert encoded[2] < encoded[1]

    # Nothing heard by any decode, free or held: still one retry, not one per layer.
    encoded.clear()
    result = base_engine._result
    base_engine._encode = counting  # type: ignore[method-assign]
    base_engine._result = lambda *args: SttResult(text="", confidence=None)  # type: ignore[method-assign]
    try:
        nothing = base_engine.transcribe_expecting(
            padded, 8000, frozenset({Expectation.DATE}), digits=None
        )
    finally:
        base_engine._encode = original  # type: ignore[method-assign]
        base_engine._result = result  # type: ignore[method-assign]
    assert nothing.text == "" and len(encoded) == 2, encoded


def test_base_is_a_moonshine_model_and_check_config_names_a_missing_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicebot_pbx import models
    from voicebot_pbx.cli import _stt_model_problems
    from voicebot_pbx.config import Config, SttConfig

    with pytest.raises(ValueError, match='model = "base" is a Moonshine model'):
        SttConfig(engine="whisper", model="base")
    config = Config(stt=SttConfig(engine="moonshine", model="base"))
    assert _stt_model_problems(config) == []
    monkeypatch.setattr(models, "converted_root", lambda: tmp_path)
    (problem,) = _stt_model_problems(config)
    assert "encoder_model.onnx does not exist" in problem and "install_models" in problem
    folder = tmp_path / MOONSHINE_BASE_EN
    folder.mkdir()
    for name in load_converted()[MOONSHINE_BASE_EN].sha256:
        (folder / name).write_bytes(b"not the converted model")
    (problem,) = _stt_model_problems(config)
    assert "sha256 does not match the manifest" in problem
