"""Chunking: Python by its syntax tree, other code by blocks, Markdown by headings, text
by token windows; every chunk within the token limit, with line ranges that point at
its own lines."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import django
import pytest

from apps.core.errors import Invalid
from apps.knowledge.chunking import (
    DEFAULT_MAX_TOKENS,
    Chunk,
    chunk_file,
    count_tokens,
    language_for,
    split_text,
)


def lines_of(text: str, chunk: Chunk) -> str:
    return "\n".join(text.split("\n")[chunk.start_line - 1 : chunk.end_line])


def assert_chunks_point_at_their_lines(text: str, chunks: list[Chunk], max_tokens: int) -> None:
    for chunk in chunks:
        assert chunk.text.strip(), chunk
        assert chunk.text in lines_of(text, chunk), (chunk.title, chunk.start_line, chunk.end_line)
        # The first and last lines are the chunk's own, not blank padding around it.
        assert lines_of(text, chunk).split("\n")[0].strip()
        assert lines_of(text, chunk).split("\n")[-1].strip()
        assert count_tokens(chunk.text) <= max_tokens, (chunk.title, count_tokens(chunk.text))
        assert chunk.metadata["tokens"] == count_tokens(chunk.text)


PYTHON = textwrap.dedent(
    '''\
    #!/usr/bin/env python
    """Orders and their totals."""

    import decimal
    from dataclasses import dataclass

    TAX = decimal.Decimal("0.2")


    # Rounded the way the accountants want.
    @dataclass
    class Line:
        """One line of an order."""

        price: decimal.Decimal
        quantity: int

        def total(self) -> decimal.Decimal:
            return self.price * self.quantity


    def order_total(lines: list[Line]) -> decimal.Decimal:
        return sum((line.total() for line in lines), decimal.Decimal(0)) * (1 + TAX)


    async def fetch(url):
        return url


    if __name__ == "__main__":
        print(order_total([]))
    '''
)


def test_python_gives_the_docstring_each_definition_and_what_lies_between():
    chunks = chunk_file("shop/orders.py", PYTHON, source="repo:1", commit="abc123")
    found = [(chunk.kind, chunk.title, chunk.start_line, chunk.end_line) for chunk in chunks]
    assert found == [
        ("module", "shop.orders", 1, 2),
        ("code", "import decimal", 4, 7),
        ("class", "Line", 10, 19),  # from the comment above the decorator to the last line
        ("function", "order_total", 22, 23),
        ("function", "fetch", 26, 27),
        ("code", 'if __name__ == "__main__":', 30, 31),
    ]
    line = chunks[2]
    assert line.text.startswith("# Rounded the way the accountants want.\n@dataclass\nclass Line:")
    assert line.metadata["symbol"] == "Line"
    assert all(chunk.source == "repo:1" and chunk.commit == "abc123" for chunk in chunks)
    assert all(chunk.path == "shop/orders.py" and chunk.metadata["language"] == "python" for chunk in chunks)
    assert_chunks_point_at_their_lines(PYTHON, chunks, DEFAULT_MAX_TOKENS)


def test_a_large_class_is_split_by_method_and_keeps_its_header():
    methods = "\n".join(
        f"    def method_{n}(self, value):\n"
        f'        """Apply rule {n} to the value and return what is left of it."""\n'
        f"        return [item for item in value if item % {n + 2} and item > {n}]\n"
        for n in range(12)
    )
    text = f'class Rules:\n    """Every rule in one place."""\n\n    limit = 10\n\n{methods}'
    chunks = chunk_file("rules.py", text, max_tokens=120, overlap=20)
    assert chunks[0].kind == "class"
    assert chunks[0].title == "Rules"
    assert chunks[0].text.startswith("class Rules:")
    assert "limit = 10" in chunks[0].text
    method_chunks = [chunk for chunk in chunks if chunk.kind == "method"]
    assert [chunk.title for chunk in method_chunks] == [f"Rules.method_{n}" for n in range(12)]
    assert lines_of(text, method_chunks[3]).lstrip().startswith("def method_3(self, value):")
    assert_chunks_point_at_their_lines(text, chunks, 120)


def test_a_function_too_large_for_one_chunk_is_split_with_overlap():
    body = "\n".join(
        f"    total += compute_value_for_row({n}, factor={n * 3}, label='row {n}')" for n in range(60)
    )
    text = f"def big():\n    total = 0\n{body}\n    return total\n"
    chunks = chunk_file("big.py", text, max_tokens=100, overlap=20)
    assert len(chunks) > 3
    assert {chunk.title for chunk in chunks} == {"big"}
    assert [chunk.metadata["part"] for chunk in chunks] == list(range(1, len(chunks) + 1))
    assert chunks[0].start_line == 1
    assert chunks[-1].end_line == 63
    for before, after in itertools.pairwise(chunks):
        # The next part starts on a line the previous one ended with: context carries over.
        assert after.start_line <= before.end_line
        assert after.start_line > before.start_line
    assert_chunks_point_at_their_lines(text, chunks, 100)


def test_python_that_does_not_parse_falls_back_to_blocks_instead_of_failing():
    text = "def broken(:\n    return 1\n\n\nclass Fine:\n    pass\n"
    chunks = chunk_file("broken.py", text)
    assert chunks
    assert {chunk.kind for chunk in chunks} == {"code"}
    assert "SyntaxError on line 1" in chunks[0].metadata["fallback"]
    assert [chunk.start_line for chunk in chunks] == [1]  # both blocks fit in one chunk
    assert_chunks_point_at_their_lines(text, chunks, DEFAULT_MAX_TOKENS)


def test_other_code_is_cut_at_blank_lines_outside_brackets():
    functions = "\n\n".join(
        f"function handler{n}(request) {{\n  const value = request.body.items[{n}];\n\n"
        f"  return respond(value * {n});\n}}"
        for n in range(30)
    )
    chunks = chunk_file("web/handlers.js", functions, max_tokens=64, overlap=10)
    assert len(chunks) > 5
    assert all(chunk.kind == "code" and chunk.metadata["language"] == "javascript" for chunk in chunks)
    for chunk in chunks:
        # Whole functions: the blank line inside a function's braces is no place to cut.
        assert chunk.text.startswith("function handler")
        assert chunk.text.rstrip().endswith("}")
        assert chunk.title.startswith("function handler")
    assert chunks[0].start_line == 1
    assert_chunks_point_at_their_lines(functions, chunks, 64)


MARKDOWN = textwrap.dedent(
    """\
    Intro before any heading.

    # Setup

    Install the tools.

    ## Linux

    Run `apt-get install`.

    ```sh
    # not a heading: inside a fence
    make run
    ```

    ## macOS
    ### Homebrew

    Run `brew install`.

    Usage
    =====

    Open the page.
    """
)


def test_markdown_sections_are_titled_by_their_heading_path():
    chunks = chunk_file("docs/README.md", MARKDOWN, source="upload:3")
    found = [(chunk.kind, chunk.title, chunk.start_line, chunk.end_line) for chunk in chunks]
    assert found == [
        ("text", "README.md", 1, 1),
        ("section", "Setup", 3, 5),
        ("section", "Setup > Linux", 7, 14),
        # "macOS" has nothing of its own under it: no chunk, but its title is in its child's.
        ("section", "Setup > macOS > Homebrew", 17, 19),
        ("section", "Usage", 21, 24),
    ]
    assert "# not a heading: inside a fence" in chunks[2].text
    assert chunks[2].metadata["heading_line"] == 7
    assert_chunks_point_at_their_lines(MARKDOWN, chunks, DEFAULT_MAX_TOKENS)


def test_a_long_markdown_section_is_split_and_every_part_keeps_its_title():
    paragraph = "Every run leaves notes behind, and the next run reads them before it starts. " * 30
    text = f"# Memory\n\n## Notes\n\n{paragraph}\n\n{paragraph}\n"
    chunks = chunk_file("memory.md", text, max_tokens=80, overlap=16)
    assert len(chunks) > 4
    assert {chunk.title for chunk in chunks} == {"Memory > Notes"}
    assert_chunks_point_at_their_lines(text, chunks, 80)


def test_text_windows_overlap_by_at_most_the_overlap():
    text = " ".join(f"sentence number {n} says something about topic {n % 7}." for n in range(120))
    spans = split_text(text, max_tokens=60, overlap=15)
    assert len(spans) > 5
    for before, after in itertools.pairwise(spans):
        assert before.tokens <= 60
        # One line of prose: the next window starts inside the previous one, at a word.
        start = text.index(after.text)
        end = text.index(before.text) + len(before.text)
        shared = text[start:end]
        assert shared, "consecutive windows share text"
        assert 0 < count_tokens(shared) <= 15
    assert spans[-1].text.endswith("topic 0.")  # nothing lost at the end (n = 119)


def test_no_overlap_when_asked_for_none():
    text = "\n".join(f"line {n} of a plain text file" for n in range(200))
    spans = split_text(text, max_tokens=50, overlap=0)
    assert [span.start_line for span in spans[1:]] == [span.end_line + 1 for span in spans[:-1]]
    assert "\n".join(span.text for span in spans) == text


def test_windows_prefer_to_end_at_a_blank_line():
    paragraphs = [" ".join(f"p{p}w{w}" for w in range(12)) for p in range(20)]
    text = "\n\n".join(paragraphs)
    spans = split_text(text, max_tokens=100, overlap=0)
    for span in spans:
        assert span.text.split("\n")[0] in paragraphs  # starts with a whole paragraph
        assert span.text.split("\n")[-1] in paragraphs  # and ends with one


def test_line_numbers_can_start_elsewhere():
    spans = split_text("a\nb\n\nc", first_line=41)
    assert [(span.start_line, span.end_line) for span in spans] == [(41, 44)]


def test_every_chunk_of_the_django_source_fits_and_points_at_its_lines():
    root = Path(django.__file__).parent
    files = [
        root / "db" / "models" / "query.py",
        root / "contrib" / "admin" / "static" / "admin" / "js" / "actions.js",
    ]
    files.append(root / "contrib" / "admin" / "templates" / "admin" / "base.html")
    for path in files:
        text = path.read_text()
        chunks = chunk_file(str(path.relative_to(root)), text)
        assert len(chunks) > 10
        assert_chunks_point_at_their_lines(text, chunks, DEFAULT_MAX_TOKENS)
    methods = [c.title for c in chunk_file("query.py", files[0].read_text()) if c.kind == "method"]
    assert "QuerySet.filter" in methods


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("a/b.py", "python"),
        ("README.md", "markdown"),
        ("src/main.go", "go"),
        ("web/app.tsx", "typescript"),
        ("Dockerfile", "dockerfile"),
        ("notes.txt", "text"),
        ("LICENSE", "text"),
    ],
)
def test_the_file_type_is_told_by_its_name(path, language):
    assert language_for(path) == language


def test_binary_and_blank_files_give_no_chunks():
    assert chunk_file("image.py", "GIF89a\x00\x01") == []
    assert chunk_file("empty.md", "  \n\n") == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 300}, "16 to 254 tokens"),
        ({"max_tokens": 8}, "16 to 254 tokens"),
        ({"max_tokens": 100, "overlap": 60}, "0 to half the chunk size (50 tokens)"),
        ({"overlap": -1}, "got -1"),
    ],
)
def test_sizes_outside_the_model_window_are_refused(options, message):
    with pytest.raises(Invalid) as refused:
        chunk_file("a.txt", "some text", **options)
    assert message in refused.value.message
