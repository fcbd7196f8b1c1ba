"""The ONNX export against our NumPy forward: onnx.checker, then onnxruntime's logits for
every architecture variant at several (B, T), T = 1 and T = block_size included; the
OnnxModel wrapper's generation and metadata. Skipped with the reason without onnx or
onnxruntime (pip install "tinygrad-char[onnx]")."""

import itertools

import numpy as np
import pytest

from tinygrad_char import GPT, GPTConfig
from tinygrad_char.training.checkpoint import save_checkpoint
from tinygrad_char.inference.sampling import generate, generate_text
from tinygrad_char.training.tokenizer import CharTokenizer

from conftest import TOL

onnx = pytest.importorskip("onnx", reason="onnx not installed: the export needs it "
                                          '(pip install "tinygrad-char[onnx]")')
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: the comparison "
                                                'needs it (pip install "tinygrad-char[onnx]")')
from tinygrad_char.interop.onnx_export import (  # noqa: E402
    OnnxModel, export_onnx, load_for_sampling, load_onnx, save_onnx)

VARIANTS = list(itertools.product(["learned", "sinusoidal"], ["pre", "post"],
                                  ["gelu", "relu"], [True, False], [True, False]))
# the modern block's options, each crossed with pre/post norm and bias (tie on, GELU-free)
MODERN = [dict(pos_encoding="rope"), dict(normalization="rmsnorm"),
          dict(activation="swiglu"), dict(activation="gelu_exact"), dict(n_kv_head=1),
          dict(pos_encoding="rope", normalization="rmsnorm", activation="swiglu", n_kv_head=1),
          dict(pos_encoding="rope", n_kv_head=2, n_head=4, rope_base=500.0)]
SHAPES = [(1, 1), (2, 1), (3, 5), (1, 8), (4, 8)]  # (B, T); block_size is 8
V, BLOCK = 11, 8


def rel(a, b):
    """max |a - b| relative to max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def make_model(seed=0, **arch):
    arch = {"n_head": 2, **arch}
    cfg = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_embd=16, **arch)
    model = GPT(cfg, seed=seed).eval()
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():  # LayerNorm gains != 1 and biases != 0 show up
        p += (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)
    return model


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("pos,norm,act,tie,bias", VARIANTS,
                         ids=["-".join(map(str, v)) for v in VARIANTS])
def test_onnxruntime_matches_numpy_forward(pos, norm, act, tie, bias):
    model = make_model(pos_encoding=pos, norm=norm, activation=act, tie_weights=tie, bias=bias)
    proto = export_onnx(model)
    onnx.checker.check_model(proto, full_check=True)  # raises on an invalid graph
    assert proto.opset_import[0].version >= 17
    names = {init.name for init in proto.graph.initializer}
    assert set(model.params) <= names, f"parameters missing: {set(model.params) - names}"
    assert ("lm_head.weight" in names) == (not tie)
    sess = session(proto)
    rng = np.random.default_rng(1)
    for B, T in SHAPES:
        idx = rng.integers(0, V, size=(B, T))
        ours, _ = model.forward(idx)
        (theirs,) = sess.run(["logits"], {"idx": idx})
        assert theirs.shape == (B, T, V), (pos, norm, act, tie, bias, B, T, theirs.shape)
        err = rel(theirs, ours)
        assert err < TOL["float32"], f"{pos}-{norm}-{act}-tie={tie}-bias={bias} (B={B}, " \
                                     f"T={T}): max relative logits error {err:.2e}"


@pytest.mark.parametrize("norm,bias", [("pre", True), ("post", False)])
@pytest.mark.parametrize("arch", MODERN, ids=["-".join(f"{k}={v}" for k, v in a.items())
                                              for a in MODERN])
def test_onnxruntime_matches_numpy_forward_modern_block(arch, norm, bias):
    """RoPE, RMSNorm, SwiGLU, the exact GELU and grouped-query attention: the graph is a
    separate translation of the block, checked here against the model's forward."""
    model = make_model(norm=norm, bias=bias, **arch)
    proto = export_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    names = {init.name for init in proto.graph.initializer}
    assert set(model.params) <= names, f"parameters missing: {set(model.params) - names}"
    sess = session(proto)
    rng = np.random.default_rng(1)
    for B, T in SHAPES:
        idx = rng.integers(0, V, size=(B, T))
        ours, _ = model.forward(idx)
        (theirs,) = sess.run(["logits"], {"idx": idx})
        err = rel(theirs, ours)
        assert err < TOL["float32"], f"{arch}-{norm}-bias={bias} (B={B}, T={T}): max " \
                                     f"relative logits error {err:.2e}"


def test_graph_declares_dynamic_axes_and_int64_input():
    proto = export_onnx(make_model())
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "idx" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "seq"]
    dims = out.type.tensor_type.shape.dim
    assert out.name == "logits"
    assert [dims[0].dim_param, dims[1].dim_param, dims[2].dim_value] == ["batch", "seq", V]
    ops = {n.op_type for n in proto.graph.node}
    assert "LayerNormalization" in ops and "Tanh" in ops  # the opset-17 op, tanh GELU


def test_longer_than_block_size_is_refused():
    model = make_model()
    sess = session(export_onnx(model))
    with pytest.raises(Exception):  # the mask and the position table stop at block_size
        sess.run(["logits"], {"idx": np.zeros((1, BLOCK + 1), dtype=np.int64)})
    wrapped = OnnxModel(sess, model.config)
    with pytest.raises(ValueError, match="exceeds block_size"):
        wrapped.forward(np.zeros((1, BLOCK + 1), dtype=np.int64))
    # the limit is stated where a user of the raw file looks: metadata and input description
    proto = export_onnx(model)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["tinygrad_char.max_seq"] == str(BLOCK)
    assert f"seq <= block_size = {BLOCK}" in proto.graph.input[0].doc_string
    assert sess.get_modelmeta().custom_metadata_map["tinygrad_char.max_seq"] == str(BLOCK)


def test_float64_model_exports_float32_with_the_same_logits():
    model = make_model()
    model64 = GPT(model.config, dtype="float64").eval()
    model64.params = {k: v.astype(np.float64) for k, v in model.params.items()}
    idx = np.random.default_rng(2).integers(0, V, size=(2, BLOCK))
    (theirs,) = session(export_onnx(model64)).run(["logits"], {"idx": idx})
    assert theirs.dtype == np.float32
    assert rel(theirs, model64.forward(idx)[0]) < TOL["float32"]


def test_save_load_roundtrip_and_generation(tmp_path):
    """The file alone is enough to sample (config and vocabulary in its metadata), and
    greedy generation on onnxruntime gives the NumPy model's text, past the window too."""
    tokenizer = CharTokenizer("abcdefghij\n", unk=False)
    model = make_model(seed=3)
    path = str(tmp_path / "m.onnx")
    save_onnx(model, tokenizer, path, step=7)
    onnx_model, tok, meta = load_onnx(path)
    assert tok == tokenizer and meta["step"] == 7 and meta["config"] == model.config.to_dict()
    assert onnx_model.num_params() == model.num_params()
    ours = generate_text(model, tokenizer, "abc", 20, temperature=0, use_cache=False)
    theirs = generate_text(onnx_model, tok, "abc", 20, temperature=0, use_cache=False)
    assert theirs == ours
    # sampled: same seed, logits equal to float rounding -> the same draws
    idx = np.array([[0, 1, 2]] * 2)
    a = generate(model, idx, 12, temperature=1.0, top_k=5, seed=4, use_cache=False)
    b = generate(onnx_model, idx, 12, temperature=1.0, top_k=5, seed=4, use_cache=False)
    np.testing.assert_array_equal(a, b)


def test_generation_from_a_prompt_longer_than_block_size(tmp_path):
    """The wrapper never hands onnxruntime more than block_size positions: generate crops
    the context (no cache), as the NumPy model's no-cache path does."""
    tokenizer = CharTokenizer("abcdefghij\n", unk=False)
    model = make_model(seed=3, pos_encoding="rope", n_kv_head=1)
    path = str(tmp_path / "m.onnx")
    save_onnx(model, tokenizer, path)
    onnx_model, tok, _ = load_onnx(path)
    prompt = "abcdefghij" * 3  # 30 > BLOCK
    ours = generate_text(model, tokenizer, prompt, 12, temperature=0, use_cache=False)
    theirs = generate_text(onnx_model, tok, prompt, 12, temperature=0, use_cache=False)
    assert theirs == ours


def test_load_for_sampling_checks_the_checkpoint(tmp_path):
    tokenizer = CharTokenizer("abcdefghij\n", unk=False)
    model = make_model(seed=3)
    ckpt, other = str(tmp_path / "m.safetensors"), str(tmp_path / "o.safetensors")
    save_checkpoint(ckpt, model, tokenizer, step=1)
    save_checkpoint(other, make_model(norm="post"), tokenizer, step=1)
    path = str(tmp_path / "m.onnx")
    save_onnx(model, tokenizer, path)
    m, tok, _ = load_for_sampling(ckpt, path)
    assert isinstance(m, OnnxModel) and tok == tokenizer
    with pytest.raises(ValueError, match="was not exported from"):
        load_for_sampling(other, path)
    # same config and vocabulary, other weights (a later step): the stored SHA-256 differs
    later = str(tmp_path / "later.safetensors")
    model.params["transformer.h.0.mlp.c_fc.weight"][0, 0] += 1e-3
    save_checkpoint(later, model, tokenizer, step=2)
    with pytest.raises(ValueError, match="weights differ"):
        load_for_sampling(later, path)
    with pytest.raises(ValueError, match="does not apply"):
        load_for_sampling(ckpt, path, backend="cupy")
    with pytest.raises(ValueError, match="no such file"):
        load_for_sampling(ckpt, str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="give a checkpoint"):
        load_for_sampling(None, None)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="onnxruntime cannot load"):
        load_onnx(str(tmp_path / "junk.onnx"))


def test_export_script(tmp_path):
    """examples/export_onnx.py writes a checked file and verifies it on onnxruntime."""
    import importlib.util

    from conftest import REPO
    spec = importlib.util.spec_from_file_location("export_onnx",
                                                  REPO / "examples" / "export_onnx.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ckpt, out = str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")
    save_checkpoint(ckpt, make_model(), CharTokenizer("abcdefghij", unk=True), step=2)
    assert script.main(["--checkpoint", ckpt, "--out", out]) == 0
    onnx.checker.check_model(onnx.load(out))
    assert script.run_cli(script.main, ["--checkpoint", str(tmp_path / "nope.safetensors"),
                                        "--out", out]) == 2
