"""Chunking: files cut into pieces the embedding model can take whole, with where they came from.

    from apps.knowledge.chunking import chunk_file

    for chunk in chunk_file("src/app/models.py", text, source="repo:42", commit="3f2a9c1"):
        chunk.title, chunk.kind, chunk.start_line, chunk.end_line  # "Order.total", "method", 120, 141

Sizes are counted in the MiniLM tokenizer's tokens (apps/knowledge/embeddings.py), the
model's own measure: it reads 256 tokens and drops the rest, so a chunk is at most
`max_tokens` (200 by default; never more than 254, the window less [CLS] and [SEP]).

By file type (`chunk_file` picks by extension):
- Python, by its syntax tree: the module docstring; each function and class with its
  decorators and the comment lines right above it; a class too large for one chunk
  becomes its methods plus the rest of its body; the statements between definitions
  (imports, constants, `if __name__ == ...`) as code chunks. A file that does not parse
  goes to the structural fallback below instead of failing.
- Other code: blocks separated by blank lines outside brackets, packed together up to
  the limit; the title is the block's first line.
- Markdown: one chunk per section; the title is the heading path ("Setup > Linux").
- Anything else: text.
Whatever is still too large is split by `split_text`: windows of at most `max_tokens`
tokens that end on a blank line, a line end or a word end (in that order of
preference, within the window's second half), each starting `overlap` tokens or fewer
before the previous one ended, on a line or word start.

Line numbers are 1-based and inclusive, and always point at the chunk's own lines:
`text.split("\n")[start_line - 1 : end_line]` contains the chunk's text.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from apps.core.errors import Invalid
from apps.knowledge.embeddings import counting_tokenizer

DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP = 40
MODEL_WINDOW = 254  # MiniLM's 256 tokens less [CLS] and [SEP]

PYTHON_SUFFIXES = frozenset({".py", ".pyi", ".pyw"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx", ".mkd"})
CODE_LANGUAGES = {
    **dict.fromkeys((".js", ".jsx", ".mjs", ".cjs"), "javascript"),
    **dict.fromkeys((".ts", ".tsx", ".mts", ".cts"), "typescript"),
    **dict.fromkeys((".c", ".h"), "c"),
    **dict.fromkeys((".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"), "cpp"),
    **dict.fromkeys((".sh", ".bash", ".zsh"), "shell"),
    **dict.fromkeys((".yaml", ".yml"), "yaml"),
    **dict.fromkeys((".html", ".htm"), "html"),
    **dict.fromkeys((".kt", ".kts"), "kotlin"),
    **dict.fromkeys((".ex", ".exs"), "elixir"),
    **dict.fromkeys((".scss", ".sass", ".less"), "css"),
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".scala": "scala",
    ".cs": "csharp",
    ".swift": "swift",
    ".m": "objective-c",
    ".rb": "ruby",
    ".php": "php",
    ".pl": "perl",
    ".lua": "lua",
    ".r": "r",
    ".dart": "dart",
    ".erl": "erlang",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".clj": "clojure",
    ".jl": "julia",
    ".zig": "zig",
    ".sql": "sql",
    ".css": "css",
    ".vue": "vue",
    ".svelte": "svelte",
    ".xml": "xml",
    ".json": "json",
    ".toml": "toml",
    ".ini": "ini",
    ".cfg": "ini",
    ".proto": "protobuf",
    ".graphql": "graphql",
    ".tf": "terraform",
    ".ps1": "powershell",
    ".gradle": "groovy",
    ".cmake": "cmake",
}
CODE_FILENAMES = {"dockerfile": "dockerfile", "makefile": "make", "containerfile": "dockerfile"}


@dataclass(frozen=True)
class Chunk:
    """A piece of a file or document, ready to embed, with its provenance."""

    text: str
    source: str  # what it belongs to, as the caller names it (e.g. "repo:42", "upload:7", "run:<id>")
    path: str  # the file's path within the source
    title: str  # "Order.total", "Setup > Linux", "func main() {", the file's name
    start_line: int  # 1-based, inclusive
    end_line: int  # inclusive
    kind: str  # module, function, class, method, code, section, text
    commit: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """sha256 of the text: the same text gives the same hash (and embedding)."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Span:
    """A stretch of a text: its characters and its 1-based inclusive line range."""

    text: str
    start_line: int
    end_line: int
    tokens: int


@dataclass(frozen=True)
class Piece:
    """What a chunker found: a span, its kind, title and metadata (no provenance yet)."""

    span: Span
    kind: str
    title: str
    metadata: dict[str, Any] = field(default_factory=dict)


def count_tokens(text: str) -> int:
    """The text's MiniLM tokens, special tokens left out."""
    return len(counting_tokenizer().encode(text, add_special_tokens=False).ids)


def check_sizes(max_tokens: int, overlap: int) -> None:
    if not 16 <= max_tokens <= MODEL_WINDOW:
        raise Invalid(
            f"The chunk size must be 16 to {MODEL_WINDOW} tokens (the embedding model reads 256);"
            f" got {max_tokens}.",
            field="max_tokens",
        )
    if not 0 <= overlap <= max_tokens // 2:
        raise Invalid(
            f"The overlap must be 0 to half the chunk size ({max_tokens // 2} tokens); got {overlap}.",
            field="overlap",
        )


class TokenizedText:
    """A text tokenized once: tokens' character ranges, words and lines, so any range of
    lines can be counted or split without tokenizing again. BERT's tokenizer splits at
    whitespace first, so the tokens of a range of lines are those that start in it."""

    def __init__(self, text: str) -> None:
        self.text = text
        encoding = counting_tokenizer().encode(text, add_special_tokens=False)
        self.starts = [start for start, _ in encoding.offsets]
        self.ends = [end for _, end in encoding.offsets]
        self.words = encoding.word_ids
        self.line_starts = [0] + [match.end() for match in re.finditer("\n", text)]
        line_of_token = [bisect.bisect_right(self.line_starts, start) - 1 for start in self.starts]
        # Tokens before each line: tokens of lines [a, b] = before[b + 1] - before[a].
        self.before = [0] * (len(self.line_starts) + 1)
        for line in line_of_token:
            self.before[line + 1] += 1
        for index in range(1, len(self.before)):
            self.before[index] += self.before[index - 1]

    @property
    def line_count(self) -> int:
        return len(self.line_starts)

    def count(self, first: int, last: int) -> int:
        """Tokens of lines first..last (0-based, inclusive)."""
        return self.before[last + 1] - self.before[first]

    def line_of(self, char: int) -> int:
        return bisect.bisect_right(self.line_starts, char) - 1

    def lines_text(self, first: int, last: int) -> str:
        end = self.line_starts[last + 1] - 1 if last + 1 < len(self.line_starts) else len(self.text)
        return self.text[self.line_starts[first] : end]

    def span(self, first: int, last: int) -> Span | None:
        """Lines first..last (0-based) without their blank lines at either end; None if
        nothing but blanks."""
        tokens = self.count(first, last)
        if tokens == 0:
            return None
        begin = self.before[first]
        first = self.line_of(self.starts[begin])
        last = self.line_of(self.ends[begin + tokens - 1] - 1)
        return Span(self.lines_text(first, last), first + 1, last + 1, tokens)

    def split(self, first: int, last: int, max_tokens: int, overlap: int) -> list[Span]:
        """Lines first..last (0-based) as one span if they fit, else windows (see the module doc)."""
        whole = self.span(first, last)
        if whole is None or whole.tokens <= max_tokens:
            return [] if whole is None else [whole]
        begin, end = self.before[first], self.before[last + 1]
        spans: list[Span] = []
        start = begin
        while start < end:
            if end - start <= max_tokens:
                stop = end
            else:
                stop = self._cut(start + max(1, max_tokens // 2), start + max_tokens)
            spans.append(self._span_of_tokens(start, stop))
            if stop >= end:
                break
            start = max(start + 1, self._restart(max(stop - overlap, start + 1), stop))
        return spans

    def _quality(self, index: int) -> int:
        """How good a place to cut the space before token `index` is: 3 a blank line, 2 a
        line end, 1 a word end, 0 inside a word."""
        if self.words[index] == self.words[index - 1]:
            return 0
        gap = self.text[self.ends[index - 1] : self.starts[index]]
        newlines = gap.count("\n")
        return 3 if newlines >= 2 else 2 if newlines else 1

    def _cut(self, low: int, high: int) -> int:
        """The best place to end a window, in [low, high]: the latest of the best quality."""
        best, best_quality = high, -1
        for index in range(high, low - 1, -1):
            quality = self._quality(index)
            if quality > best_quality:
                best, best_quality = index, quality
                if quality == 3:
                    break
        return best

    def _restart(self, low: int, high: int) -> int:
        """Where the next window starts, in [low, high]: the earliest line start, else the
        earliest word start, else `high` (no overlap)."""
        for wanted in (2, 1):
            for index in range(low, high):
                if self._quality(index) >= wanted:
                    return index
        return high

    def _span_of_tokens(self, start: int, stop: int) -> Span:
        """Tokens [start, stop) as text: from the first token (its line's indentation
        too, when only whitespace comes before it) to the last one's end."""
        begin_char, end_char = self.starts[start], self.ends[stop - 1]
        first_line = self.line_of(begin_char)
        if not self.text[self.line_starts[first_line] : begin_char].strip():
            begin_char = self.line_starts[first_line]
        return Span(
            self.text[begin_char:end_char], first_line + 1, self.line_of(end_char - 1) + 1, stop - start
        )


def split_text(
    text: str, *, max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP, first_line: int = 1
) -> list[Span]:
    """The text as spans of at most `max_tokens` tokens, consecutive ones sharing up to
    `overlap` tokens; line numbers count from `first_line`."""
    check_sizes(max_tokens, overlap)
    tokenized = TokenizedText(text)
    spans = tokenized.split(0, tokenized.line_count - 1, max_tokens, overlap)
    if first_line != 1:
        spans = [
            replace(
                span, start_line=span.start_line + first_line - 1, end_line=span.end_line + first_line - 1
            )
            for span in spans
        ]
    return spans


# --- Python ---------------------------------------------------------------------------------------


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


class _PythonChunker:
    def __init__(self, tokenized: TokenizedText, module: str, max_tokens: int, overlap: int) -> None:
        self.tokenized = tokenized
        self.lines = tokenized.text.split("\n")
        self.module = module
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.pieces: list[Piece] = []

    def run(self, tree: ast.Module) -> list[Piece]:
        body = list(tree.body)
        first = 0
        if body and _is_docstring(body[0]):
            # With what comes before it (a shebang, a licence header).
            first = _end(body.pop(0))
            self._add(0, first - 1, "module", self.module, symbol=self.module)
        self._body(
            body, first=first, last=len(self.lines) - 1, qualname="", rest_kind="code", rest_title=None
        )
        return sorted(self.pieces, key=lambda piece: piece.span.start_line)

    def _body(
        self,
        statements: Iterable[ast.stmt],
        *,
        first: int,
        last: int,
        qualname: str,
        rest_kind: str,
        rest_title: str | None,
    ) -> None:
        """Each definition in `statements` on its own; the lines of first..last (0-based)
        that are in none of them grouped in runs as `rest_kind` chunks."""
        taken: list[tuple[int, int]] = []
        for node in statements:
            if isinstance(node, _DEFINITIONS):
                begin = self._start(node, floor=taken[-1][1] + 1 if taken else first)
                self._definition(node, begin, _end(node) - 1, qualname)
                taken.append((begin, _end(node) - 1))
        cursor = first
        for begin, end in [*taken, (last + 1, last + 1)]:
            if begin > cursor:
                for span in self.tokenized.split(cursor, begin - 1, self.max_tokens, self.overlap):
                    title = rest_title or _first_line(span.text) or self.module
                    metadata = {"symbol": qualname} if qualname else {}
                    self.pieces.append(Piece(span, rest_kind, title, metadata))
            cursor = max(cursor, end + 1)

    def _start(self, node: Definition, floor: int) -> int:
        """The definition's first line (0-based): its first decorator, or a comment block
        right above it (no blank line between)."""
        begin = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)]) - 1
        while begin - 1 >= floor and self.lines[begin - 1].lstrip().startswith("#"):
            begin -= 1
        return begin

    def _definition(self, node: Definition, first: int, last: int, qualname: str) -> None:
        name = f"{qualname}.{node.name}" if qualname else node.name
        # Definitions are taken apart only inside a class, so one with a qualname is a method.
        kind = "class" if isinstance(node, ast.ClassDef) else "method" if qualname else "function"
        if self.tokenized.count(first, last) <= self.max_tokens or kind != "class":
            self._add(first, last, kind, name, symbol=name)
            return
        # A large class: its methods (and nested classes) apart, the rest of its body as "class" chunks.
        self._body(node.body, first=first, last=last, qualname=name, rest_kind="class", rest_title=name)

    def _add(self, first: int, last: int, kind: str, title: str, **metadata: Any) -> None:
        spans = self.tokenized.split(first, last, self.max_tokens, self.overlap)
        for index, span in enumerate(spans):
            extra = {"part": index + 1, "parts": len(spans)} if len(spans) > 1 else {}
            self.pieces.append(Piece(span, kind, title, {**metadata, **extra}))


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _end(node: ast.stmt) -> int:
    return node.end_lineno if node.end_lineno is not None else node.lineno


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:80]
    return ""


def chunk_python(
    text: str, *, module: str, max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP
) -> list[Piece]:
    check_sizes(max_tokens, overlap)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte
        pieces = chunk_code(text, language="python", max_tokens=max_tokens, overlap=overlap)
        reason = f"not parsed: {error.__class__.__name__} on line {getattr(error, 'lineno', None) or '?'}"
        return [replace(piece, metadata={**piece.metadata, "fallback": reason}) for piece in pieces]
    return _PythonChunker(TokenizedText(text), module, max_tokens, overlap).run(tree)


# --- other code -----------------------------------------------------------------------------------


_OPENERS = re.compile(r"[\[{(]")
_CLOSERS = re.compile(r"[\]})]")


def _blocks(lines: list[str]) -> list[tuple[int, int]]:
    """Top-level blocks (0-based inclusive line ranges): runs of non-blank lines ended
    by a blank line while no bracket is open."""
    blocks: list[tuple[int, int]] = []
    depth = 0
    start: int | None = None
    last = 0
    for index, line in enumerate(lines):
        if not line.strip():
            if start is not None and depth <= 0:
                blocks.append((start, last))
                start, depth = None, 0
            continue
        if start is None:
            start = index
        depth += len(_OPENERS.findall(line)) - len(_CLOSERS.findall(line))
        last = index
    if start is not None:
        blocks.append((start, last))
    return blocks


def chunk_code(
    text: str, *, language: str, max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP
) -> list[Piece]:
    """Blocks packed into chunks of up to `max_tokens`; a larger block is split."""
    check_sizes(max_tokens, overlap)
    tokenized = TokenizedText(text)
    pieces: list[Piece] = []
    group: list[tuple[int, int]] = []
    group_tokens = 0

    def flush() -> None:
        if group:
            span = tokenized.span(group[0][0], group[-1][1])
            if span is not None:
                pieces.append(Piece(span, "code", _first_line(span.text), {"language": language}))
            group.clear()

    for first, last in _blocks(text.split("\n")):
        tokens = tokenized.count(first, last)
        if tokens > max_tokens:
            flush()
            group_tokens = 0
            for span in tokenized.split(first, last, max_tokens, overlap):
                pieces.append(Piece(span, "code", _first_line(span.text), {"language": language}))
            continue
        if group_tokens + tokens > max_tokens:
            flush()
            group_tokens = 0
        group.append((first, last))
        group_tokens += tokens
    flush()
    return pieces


# --- Markdown -------------------------------------------------------------------------------------


_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r"^ {0,3}([-*+>|]|\d+[.)]|#|`{3}|~{3})")


def _headings(lines: list[str]) -> list[tuple[int, int, int, str]]:
    """(first line, heading's last line, level, title) of each heading, 0-based; none
    inside fenced code or YAML front matter."""
    headings: list[tuple[int, int, int, str]] = []
    fence: str | None = None
    index = 0
    if lines and lines[0].strip() == "---":  # front matter: up to the next ---
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                index = end + 1
                break
    while index < len(lines):
        line = lines[index]
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
        elif opened:
            fence = opened.group(1)
        elif match := _ATX_HEADING.match(line):
            headings.append((index, index, len(match.group(1)), (match.group(2) or "").strip()))
        elif (
            index + 1 < len(lines)
            and line.strip()
            and not _NOT_PARAGRAPH.match(line)
            and (underline := _SETEXT_UNDERLINE.match(lines[index + 1]))
            and (index == 0 or not lines[index - 1].strip() or (headings and headings[-1][1] == index - 1))
        ):
            level = 1 if underline.group(1)[0] == "=" else 2
            headings.append((index, index + 1, level, line.strip()))
            index += 1
        index += 1
    return headings


def chunk_markdown(
    text: str, *, name: str, max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP
) -> list[Piece]:
    """One chunk per section (split if too large), titled by its heading path; what
    comes before the first heading is titled `name`. A heading with nothing under it
    but other headings gives no chunk of its own: its title is in theirs."""
    check_sizes(max_tokens, overlap)
    tokenized = TokenizedText(text)
    lines = text.split("\n")
    headings = _headings(lines)
    sections: list[tuple[int, int, int, str]] = []  # first line, heading's last line, last line, title
    if not headings or headings[0][0] > 0:
        end = headings[0][0] - 1 if headings else len(lines) - 1
        sections.append((0, -1, end, name))
    path: list[tuple[int, str]] = []
    for position, (first, heading_end, level, title) in enumerate(headings):
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title or "(untitled)"))
        last = headings[position + 1][0] - 1 if position + 1 < len(headings) else len(lines) - 1
        sections.append((first, heading_end, last, " > ".join(title for _, title in path)))
    pieces: list[Piece] = []
    for first, heading_end, last, title in sections:
        if heading_end + 1 > last or tokenized.count(heading_end + 1, last) == 0:
            continue  # a heading with nothing under it
        kind = "section" if heading_end >= first else "text"
        for index, span in enumerate(tokenized.split(first, last, max_tokens, overlap)):
            metadata: dict[str, Any] = {"heading_line": first + 1} if heading_end >= first else {}
            if index:
                metadata["part"] = index + 1
            pieces.append(Piece(span, kind, title, metadata))
    return pieces


# --- the dispatcher -------------------------------------------------------------------------------


def language_for(path: str) -> str:
    """python, markdown, a code language (go, typescript, ...), or text."""
    name = PurePosixPath(path.replace("\\", "/")).name
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PYTHON_SUFFIXES:
        return "python"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in CODE_LANGUAGES:
        return CODE_LANGUAGES[suffix]
    return CODE_FILENAMES.get(name.lower(), "text")


def _module_name(path: str) -> str:
    parts = list(PurePosixPath(path.replace("\\", "/")).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(part for part in parts if part not in ("/", "..", ".")) or path


def chunk_file(
    path: str,
    text: str,
    *,
    source: str = "",
    commit: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    **metadata: Any,
) -> list[Chunk]:
    """The file's chunks in line order, by its type (see the module doc); `metadata`
    goes into every chunk's, beside what the chunker adds (language, symbol, part,
    parts). A text with a NUL character is taken for binary and gives no chunks."""
    check_sizes(max_tokens, overlap)
    if "\x00" in text or not text.strip():
        return []
    language = language_for(path)
    name = PurePosixPath(path.replace("\\", "/")).name or path
    pieces: list[Piece]
    if language == "python":
        pieces = chunk_python(text, module=_module_name(path), max_tokens=max_tokens, overlap=overlap)
    elif language == "markdown":
        pieces = chunk_markdown(text, name=name, max_tokens=max_tokens, overlap=overlap)
    elif language == "text":
        pieces = [
            Piece(span, "text", name, {}) for span in split_text(text, max_tokens=max_tokens, overlap=overlap)
        ]
    else:
        pieces = chunk_code(text, language=language, max_tokens=max_tokens, overlap=overlap)
    return [
        Chunk(
            text=piece.span.text,
            source=source,
            path=path,
            title=piece.title,
            start_line=piece.span.start_line,
            end_line=piece.span.end_line,
            kind=piece.kind,
            commit=commit,
            metadata={"language": language, "tokens": piece.span.tokens, **piece.metadata, **metadata},
        )
        for piece in pieces
    ]
