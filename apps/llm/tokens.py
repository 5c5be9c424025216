"""Token estimates without a tokenizer download.

Context-window decisions, cost estimates before a call and the usage of a stream
whose server reports none all need a token count before (or without) the provider
saying. The exact tokenizers (tiktoken's BPE files, Claude's, Gemini's) are
downloads we refuse at run time, so this is a heuristic over the pieces BPE
tokenizers split text into: a short common word is one token and longer words
one more per ~6 letters, digits go in groups (three for OpenAI's o200k, one for
Llama-style vocabularies), each punctuation mark or symbol is about one token,
a run of newlines one, indentation one per four spaces, and letters of scripts
without spaces (CJK) about one each. Each family then gets its own factor and
per-message overhead (role markers and separators of its chat format).

It errs high on purpose (a 5-15% margin on English prose and code): saying a
prompt fits when it does not costs a failed call, the other way round only a
slightly earlier truncation."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from apps.llm.types import Message, Tool


@dataclass(frozen=True)
class Family:
    name: str
    digits_per_token: int
    factor: float  # multiplies the piece count (how much coarser/finer the vocabulary is)
    per_message: int  # role markers and separators per message
    per_reply: int  # what primes the assistant's answer


FAMILIES: dict[str, Family] = {
    "openai": Family("openai", digits_per_token=3, factor=1.0, per_message=4, per_reply=3),
    # Claude's tokenizer cuts English and code into more pieces than o200k.
    "anthropic": Family("anthropic", digits_per_token=3, factor=1.15, per_message=5, per_reply=3),
    "gemini": Family("gemini", digits_per_token=1, factor=1.0, per_message=4, per_reply=2),
    # Llama/Mistral/SmolLM vocabularies (32k-50k entries): finer than o200k, digits one by one.
    "llama": Family("llama", digits_per_token=1, factor=1.1, per_message=5, per_reply=3),
}
# Provider kind -> tokenizer family (OpenAI-compatible servers mostly serve open models).
PROVIDER_FAMILIES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "openai_compatible": "llama",
    "local": "llama",
}

_PIECES = re.compile(
    r"(?P<ascii>[A-Za-z]+)"
    r"|(?P<digits>\d+)"
    r"|(?P<newlines>\s*\n\s*)"
    r"|(?P<spaces>[ \t]+)"
    r"|(?P<letters>[^\W\d_]+)"  # letters outside ASCII
    r"|(?P<other>.)",
    re.DOTALL,
)


def family_of(provider_kind: str) -> Family:
    return FAMILIES[PROVIDER_FAMILIES.get(provider_kind, "openai")]


def _word_tokens(length: int) -> int:
    return 1 + (length - 1) // 6


def _raw_count(text: str, family: Family) -> int:
    count = 0
    for match in _PIECES.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "ascii":
            count += _word_tokens(len(piece))
        elif kind == "digits":
            count += math.ceil(len(piece) / family.digits_per_token)
        elif kind == "newlines":
            count += 1 + piece.count("\n") // 4 + len(piece.rsplit("\n", 1)[-1]) // 4
        elif kind == "spaces":
            count += (len(piece) - 1) // 4  # one space joins the next word
        elif kind == "letters":
            # Accented Latin/Cyrillic words split somewhat finer; CJK about a token a character.
            count += (
                len(piece) if any(ord(char) >= 0x2E80 for char in piece) else _word_tokens(len(piece)) + 1
            )
        else:
            count += 1
    return count


def estimate_text_tokens(text: str, family: Family | str = "openai") -> int:
    if not text:
        return 0
    chosen = FAMILIES[family] if isinstance(family, str) else family
    return math.ceil(_raw_count(text, chosen) * chosen.factor)


def estimate_tool_tokens(tools: Iterable[Tool], family: Family | str = "openai") -> int:
    """The tool definitions as the provider puts them before the conversation."""
    chosen = FAMILIES[family] if isinstance(family, str) else family
    total = 0
    for tool in tools:
        text = f"{tool.name}\n{tool.description}\n{json.dumps(tool.parameters, separators=(',', ':'))}"
        total += estimate_text_tokens(text, chosen) + 8
    return total


def estimate_message_tokens(
    messages: Iterable[Message], family: Family | str = "openai", *, tools: Iterable[Tool] = ()
) -> int:
    """Prompt tokens of a conversation (and its tools), as the provider will count them."""
    chosen = FAMILIES[family] if isinstance(family, str) else family
    total = chosen.per_reply
    for message in messages:
        total += chosen.per_message + estimate_text_tokens(message.content or "", chosen)
        for call in message.tool_calls:
            total += (
                4 + estimate_text_tokens(call.name, chosen) + estimate_text_tokens(call.arguments, chosen)
            )
        if message.name:
            total += 1 + estimate_text_tokens(message.name, chosen)
    return total + estimate_tool_tokens(tools, chosen)
