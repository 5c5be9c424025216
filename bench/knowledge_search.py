"""The knowledge index's benchmarks: query latency and recall at 100,000 chunks, and ingest rate.

Sections of `python -m bench.knowledge` (its SECTIONS), each printing a table:

  query-latency  100,000 vectors in one organization's collection: a few thousand real
                 chunks of the Django source embedded by our MiniLM, and noisy copies of
                 them (Gaussian noise, re-normalised) up to the count; embedding 100,000
                 texts on two cores would take an hour. Rows through our own path
                 (KnowledgeChunk by bulk_create, OrganizationIndex.upsert in batches of
                 services.INDEX_BATCH), with the insert rates. Then, over held-out real
                 chunks' vectors and noisy versions of them:
                 (a) OrganizationIndex.query, vector in and 10 keys out, p50/p99
                     (goal p50 <= 10 ms), embedded Chroma and a Chroma server (`chroma run`);
                 (b) services.search(organization, query text, k=10) end to end: the query's
                     embedding, the index query (over-fetching scoring.candidates(10)), the
                     rows from PostgreSQL, re-ranking, the retrieval UPDATE;
                 (c) recall@10 of (a) against exact search (numpy, cosine), goal >= 0.95,
                     for all queries and for the real and noisy ones apart; embedded, also
                     chromadb's own Collection.query on the same collection (what our
                     wrapper costs) and a second collection made with a larger hnsw
                     search_ef (--search-ef, 0 by default; store.py's HNSW_CONFIGURATION
                     sets the collections' own);
                 (d) FAISS beside it on the same vectors, in the bench environment
                     (.run/bench-venv, requirements/bench.in): IndexHNSWFlat with Chroma's
                     HNSW parameters, and the exact IndexFlatIP.
  ingest-rate    The Django source tree (site-packages/django: .py, .html, .txt) through
                 services.source_create and one services.chunks_put per file into embedded
                 Chroma: files/s, chunks/s, and the time split into chunking, embedding,
                 and PostgreSQL plus the index. --files (default 600 of about 1,060, spread
                 evenly, under 4 minutes on two cores; 0: all).

Both run against their own database, agentyard_bench_knowledge (made afresh per section,
dropped at the end unless --keep), Redis database 6, and a temporary Chroma folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench.llm_gateway import BENCH_REQUIREMENTS, BENCH_VENV, ROOT, percentile, progress

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from apps.knowledge.chunking import Chunk
    from apps.tenancy.models import Organization

BENCH_DATABASE = "agentyard_bench_knowledge"
BENCH_REDIS_DB = 6
GOAL_QUERY_P50_MS = 10.0
GOAL_RECALL = 0.95
K = 10
# The norm of the noise added to a real vector to make a copy: cosine ~ 1/sqrt(1 + 0.5^2)
# = 0.89 to its original, ~0.8 between two copies of one original: near neighbours, as
# chunks of one module are, never duplicates.
NOISE = 0.5
INGEST_SUFFIXES = (".py", ".html", ".txt")
# All of django/ (1,057 files, 15,800 chunks) takes about 6 minutes on two cores, nine tenths
# of it embedding (~42 chunks/s); this many files, spread evenly over it (~9,000 chunks), under 4.
DEFAULT_INGEST_FILES = 600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This module's options, on bench/knowledge.py's parser."""
    group = parser.add_argument_group("query-latency and ingest-rate")
    group.add_argument("--vectors", type=int, default=100_000, help="vectors in the collection")
    group.add_argument("--real", type=int, default=3000, help="real chunks embedded for them")
    group.add_argument("--queries", type=int, default=500, help="index queries timed (vector in)")
    group.add_argument("--searches", type=int, default=200, help="end-to-end searches timed (text in)")
    group.add_argument("--no-server", action="store_true", help="leave the Chroma server out")
    group.add_argument(
        "--search-ef",
        type=int,
        default=0,
        help="also time a collection made with this hnsw search_ef (0: not)",
    )
    group.add_argument("--no-faiss", action="store_true", help="leave FAISS out (no bench environment)")
    group.add_argument(
        "--files",
        type=int,
        default=DEFAULT_INGEST_FILES,
        help="ingest this many files, spread evenly over django/ (0: all)",
    )
    group.add_argument("--keep", action="store_true", help=f"leave the {BENCH_DATABASE} database behind")


def check_options(options: argparse.Namespace) -> str | None:
    """What is wrong with the options, if anything."""
    if options.real < 100 or options.vectors < options.real:
        return "--real must be at least 100 and --vectors at least --real"
    if options.queries < 20 or options.searches < 10 or options.files < 0 or options.search_ef < 0:
        return "--queries must be at least 20, --searches at least 10, --files and --search-ef not negative"
    return None


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    from bench.knowledge import table as knowledge_table  # here: bench.knowledge imports this module

    return knowledge_table(rows, header)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def disconnect() -> None:
    """Every connection closed, the pool's too (the database is about to be dropped)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
        close_pool = getattr(connection, "close_pool", None)  # PostgreSQL with a pool
        if close_pool is not None:
            close_pool()


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


@dataclass
class Latencies:
    """Milliseconds per call."""

    samples: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99) if self.samples else float("nan")


def timed_each(call: Callable[[Any], object], items: Sequence[Any], warmup: Sequence[Any]) -> Latencies:
    for item in warmup:
        call(item)
    latencies = Latencies()
    for item in items:
        started = time.perf_counter()
        call(item)
        latencies.samples.append((time.perf_counter() - started) * 1000)
    return latencies


# The bench database and organization -----------------------------------------------------------


@dataclass
class World:
    organization: Organization
    chroma_path: Path


def server_url() -> str:
    """The PostgreSQL server of DATABASE_URL (the bench database's URL, once set: same server)."""
    from bench.provisioning import DEFAULT_DATABASE_URL

    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def django_setup() -> None:
    """Django on the bench database (which `bench_world` makes), once per process."""
    import django
    from django.conf import settings

    from bench.provisioning import database_url

    if settings.configured:
        # Settings read already in this process (an earlier section): they must be ours.
        if settings.DATABASES["default"]["NAME"] != BENCH_DATABASE:
            raise SystemExit("bench: Django is set up on another database; run this section on its own")
    else:
        redis_url = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
        os.environ.update(
            {
                "DATABASE_URL": database_url(server_url(), BENCH_DATABASE),
                "REDIS_URL": redis_url._replace(path=f"/{BENCH_REDIS_DB}").geturl(),
                "DJANGO_SETTINGS_MODULE": "config.settings.dev",
                "DEBUG": "false",  # DEBUG keeps every query's SQL: memory and time
                "LOG_LEVEL": "WARNING",
                "CHROMA_URL": "",
            }
        )
    django.setup()


@contextmanager
def bench_world(options: argparse.Namespace, slug: str) -> Iterator[World]:
    """A fresh bench database with one provisioned organization, its schema active, and
    the embedded index in a temporary folder; all removed at the end (--keep: the database
    stays)."""
    from bench.provisioning import database_recreate, quiet

    server = server_url()
    django_setup()
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.test.utils import override_settings
    from django_tenants.utils import schema_context

    from apps.knowledge import store
    from apps.tenancy.models import Organization
    from apps.tenancy.services import organization_create, organization_provision

    disconnect()
    database_recreate(server, BENCH_DATABASE)
    ContentType.objects.clear_cache()
    chroma_path = Path(tempfile.mkdtemp(prefix="agentyard-bench-chroma-"))
    try:
        progress(f"bench: migrating {BENCH_DATABASE}")
        with quiet():
            call_command("migrate", interactive=False, verbosity=0)
            organization = organization_create(
                name=f"Bench {slug}", slug=f"bench-{slug}", created_by=None, provision_async=False
            )
            organization = organization_provision(organization_id=organization.pk)
        if organization.status != Organization.Status.ACTIVE:
            raise RuntimeError(f"the bench organization was not provisioned: {organization.status_detail}")
        with override_settings(CHROMA_URL="", KNOWLEDGE_CHROMA_PATH=str(chroma_path)):
            store.clients_reset()
            try:
                with schema_context(organization.schema_name):
                    yield World(organization=organization, chroma_path=chroma_path)
            finally:
                store.clients_reset()
    finally:
        shutil.rmtree(chroma_path, ignore_errors=True)
        disconnect()
        if not options.keep:
            database_recreate(server, BENCH_DATABASE, create=False)


@contextmanager
def chroma_server() -> Iterator[str]:
    """`chroma run` on a free loopback port, data and log in a temporary folder; its URL."""
    import httpx

    from bench.api import free_port

    folder = Path(tempfile.mkdtemp(prefix="agentyard-bench-chroma-server-"))
    port = free_port()
    log = (folder / "chroma.log").open("wb")
    command = [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(folder / "data")]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "chroma.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Chroma server did not start:\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


# FAISS, in the bench environment -----------------------------------------------------------------


def faiss_python() -> str | None:
    """The bench environment's interpreter with faiss; None if it cannot be installed."""
    python = BENCH_VENV / "bin" / "python"
    check = [str(python), "-c", "import faiss"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    progress(f"bench: installing {BENCH_REQUIREMENTS.relative_to(ROOT)} into {BENCH_VENV.relative_to(ROOT)}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-r", BENCH_REQUIREMENTS], capture_output=True, text=True
    )
    if installed.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
        progress("bench: faiss did not install; its rows are left out:\n" + installed.stderr[-2000:])
        return None
    return str(python)


def faiss_child(directory: str) -> None:
    """Runs in the bench environment. Reads base.npy, queries.npy and params.json from
    `directory`; builds IndexHNSWFlat (inner product: the vectors have norm 1, so cosine)
    and IndexFlatIP; times one query at a time; writes ids-<name>.npy and prints JSON."""
    import faiss  # type: ignore[import-not-found,unused-ignore]
    import numpy as np

    folder = Path(directory)
    base = np.load(folder / "base.npy")
    queries = np.load(folder / "queries.npy")
    params = json.loads((folder / "params.json").read_text())
    dimension, k = base.shape[1], int(params["k"])
    out: dict[str, Any] = {
        "version": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "indexes": [],
    }
    hnsw = faiss.IndexHNSWFlat(dimension, int(params["m"]), faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = int(params["ef_construction"])
    flat = faiss.IndexFlatIP(dimension)
    for name, index in (("hnsw", hnsw), ("flat", flat)):
        started = time.perf_counter()
        index.add(base)
        build = time.perf_counter() - started
        if name == "hnsw":
            hnsw.hnsw.efSearch = int(params["ef_search"])
        for query in queries[:20]:
            index.search(query.reshape(1, -1), k)
        ids = np.empty((len(queries), k), dtype=np.int64)
        latencies = []
        for row, query in enumerate(queries):
            started = time.perf_counter()
            _, found = index.search(query.reshape(1, -1), k)
            latencies.append((time.perf_counter() - started) * 1000)
            ids[row] = found[0]
        np.save(folder / f"ids-{name}.npy", ids)
        out["indexes"].append({"name": name, "build_seconds": build, "latencies": latencies})
    print(json.dumps(out), flush=True)


def faiss_run(
    base: NDArray[np.float32], queries: NDArray[np.float32], hnsw: dict[str, int]
) -> tuple[str, list[Found]] | None:
    """FAISS on the same vectors in the bench environment; (version and threads, results)."""
    import numpy as np

    python = faiss_python()
    if python is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="agentyard-bench-faiss-"))
    try:
        np.save(folder / "base.npy", base)
        np.save(folder / "queries.npy", queries)
        (folder / "params.json").write_text(json.dumps({"k": K, **hnsw}))
        progress(f"bench: FAISS HNSW and flat on the same {len(base):,} vectors, in the bench environment")
        result = subprocess.run(
            [python, "-m", "bench.knowledge_search", "--faiss-child", str(folder)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            progress("bench: the FAISS run failed:\n" + result.stderr[-3000:])
            return None
        data = json.loads(result.stdout.strip().splitlines()[-1])
        labels = {
            "hnsw": f"FAISS {data['version']} IndexHNSWFlat (M {hnsw['m']}, efSearch {hnsw['ef_search']})",
            "flat": f"FAISS {data['version']} IndexFlatIP (exact)",
        }
        results = [
            Found(
                label=f"{labels[entry['name']]}, built in {float(entry['build_seconds']):.0f} s",
                latencies=Latencies([float(value) for value in entry["latencies"]]),
                ids=np.load(folder / f"ids-{entry['name']}.npy"),
            )
            for entry in data["indexes"]
        ]
        return f"FAISS {data['version']}, {data['threads']} OpenMP threads", results
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Section: query latency --------------------------------------------------------------------------


def django_python_chunks(count: int) -> list[Chunk]:
    """`count` chunks drawn (seeded) from every chunk of the Django source's .py files."""
    import random

    import django

    from apps.knowledge.chunking import chunk_file

    root = Path(django.__file__).parent
    chunks: list[Chunk] = []
    for path in sorted(root.rglob("*.py")):
        chunks += chunk_file(str(path.relative_to(root.parent)), path.read_text(errors="replace"))
    if len(chunks) < count:
        raise SystemExit(f"the Django source gives {len(chunks)} chunks, fewer than {count}")
    return random.Random(100_000).sample(chunks, count)


def noisy(vectors: NDArray[np.float32], count: int, seed: int) -> NDArray[np.float32]:
    """`count` copies of the rows in turn, each plus Gaussian noise of norm ~NOISE, normalised."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dimension = vectors.shape[1]
    copies = vectors[np.arange(count) % len(vectors)] + rng.normal(
        0.0, NOISE / np.sqrt(dimension), size=(count, dimension)
    ).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return copies.astype(np.float32)


def query_text(chunk: Chunk) -> str:
    """A short query made of a chunk: its title and first line, as someone would type."""
    first = next((line.strip() for line in chunk.text.splitlines() if line.strip()), "")
    return f"{chunk.title} {first}"[:200]


def exact_top(base: NDArray[np.float32], queries: NDArray[np.float32]) -> NDArray[np.int64]:
    """The K most similar rows of `base` for each query, best first (cosine: norms are 1)."""
    import numpy as np

    out = np.empty((len(queries), K), dtype=np.int64)
    for begin in range(0, len(queries), 100):
        similarity = queries[begin : begin + 100] @ base.T
        top = np.argpartition(-similarity, K, axis=1)[:, :K]
        ranked = np.take_along_axis(similarity, top, axis=1)
        out[begin : begin + 100] = np.take_along_axis(top, np.argsort(-ranked, axis=1), axis=1)
    return out


@dataclass
class Found:
    """One way of searching the vectors: its latencies and the rows it found per query."""

    label: str
    latencies: Latencies
    ids: NDArray[np.int64]  # (queries, K)


def recall_at_k(
    found: NDArray[np.int64], exact: NDArray[np.int64], rows: NDArray[np.bool_] | None = None
) -> float:
    """The share of the exact top K found, over the queries `rows` selects (all by default)."""
    pairs = zip(found.tolist(), exact.tolist(), strict=True)
    chosen = [pair for row, pair in enumerate(pairs) if rows is None or rows[row]]
    hits = sum(len(set(ids) & set(wanted)) for ids, wanted in chosen)
    return hits / float(len(chosen) * K) if chosen else float("nan")


@dataclass
class ModeResult:
    label: str
    upsert_seconds: float
    found: list[Found]  # ours first
    overfetch: Latencies
    search: Latencies
    embed: Latencies


def upsert_all(index: Any, keys: list[str], base: NDArray[np.float32], metadata: dict[str, Any]) -> float:
    """Seconds to send every vector, in the batches services.sync_index sends."""
    from apps.knowledge import services

    started = time.perf_counter()
    for begin in range(0, len(keys), services.INDEX_BATCH):
        end = begin + services.INDEX_BATCH
        index.upsert(keys[begin:end], base[begin:end], [metadata] * len(keys[begin:end]))
    return time.perf_counter() - started


def timed_ids(
    label: str, query: Callable[[NDArray[np.float32]], list[int]], queries: NDArray[np.float32]
) -> Found:
    import numpy as np

    found: list[list[int]] = []
    latencies = timed_each(lambda vector: found.append(query(vector)), list(queries), list(queries[:20]))
    return Found(label, latencies, np.array(found[20:], dtype=np.int64))  # the first 20: the warm-up


def measure_mode(
    label: str,
    options: argparse.Namespace,
    organization: Organization,
    keys: list[str],
    base: NDArray[np.float32],
    metadata: dict[str, Any],
    queries: NDArray[np.float32],
    texts: list[str],
    warmup_texts: list[str],
) -> ModeResult:
    """Fill the current mode's collection with `base`, then (a) and (b) on it; embedded,
    also chromadb's own query on the same collection and, with --search-ef, on a
    collection made with that search_ef."""
    from apps.knowledge import scoring, services, store
    from apps.knowledge.embeddings import default_provider

    index = store.current_index()
    progress(f"bench: {label}: upserting {len(keys):,} vectors in batches of {services.INDEX_BATCH}")
    upsert_seconds = upsert_all(index, keys, base, metadata)
    if index.count() != len(keys):
        raise RuntimeError(f"{label}: the collection holds {index.count()} vectors, not {len(keys)}")
    position = {key: row for row, key in enumerate(keys)}

    progress(f"bench: {label}: {len(queries)} index queries, k={K}")
    found = [
        timed_ids(
            f"ours: OrganizationIndex.query, {label}",
            lambda vector: [position[hit.key] for hit in index.query(vector, K)],
            queries,
        )
    ]
    overfetch = scoring.candidates(K)
    over = timed_each(lambda vector: index.query(vector, overfetch), list(queries), list(queries[:20]))

    if store.describe() == "the embedded Chroma index":

        def raw(collection: Any) -> Callable[[NDArray[np.float32]], list[int]]:
            def query(vector: NDArray[np.float32]) -> list[int]:
                result = collection.query(query_embeddings=vector.reshape(1, -1), n_results=K, include=[])
                return [position[key] for key in result["ids"][0]]

            return query

        same = store.client().get_collection(index.name)
        found.append(timed_ids("  chromadb's Collection.query on it (no wrapper)", raw(same), queries))
        if options.search_ef:
            progress(f"bench: {label}: a second collection with search_ef={options.search_ef}")
            built = same.configuration_json.get("hnsw") or {}
            other = store.client().create_collection(
                f"bench-search-ef-{options.search_ef}",
                configuration={
                    "hnsw": {
                        "space": built.get("space", "cosine"),
                        "ef_construction": int(built.get("ef_construction", 100)),
                        "max_neighbors": int(built.get("max_neighbors", 16)),
                        "ef_search": options.search_ef,
                    }
                },
                embedding_function=None,
            )
            upsert_all(other, keys, base, metadata)
            found.append(
                timed_ids(
                    f"  chromadb, a collection made with search_ef={options.search_ef} (knob)",
                    raw(other),
                    queries,
                )
            )

    progress(f"bench: {label}: {len(texts)} searches end to end")

    def search(text: str) -> None:
        services.search(organization=organization, query=text, k=K)

    searches = timed_each(search, texts, warmup_texts)
    provider = default_provider()
    provider.cache.clear()
    embeds = timed_each(lambda text: provider.embed([text]), texts, [])
    provider.cache.clear()
    return ModeResult(label, upsert_seconds, found, over, searches, embeds)


def query_latency(options: argparse.Namespace) -> str:
    import chromadb
    import numpy as np

    django_setup()
    from django.test.utils import override_settings
    from django.utils import timezone

    from apps.knowledge import scoring, services, store
    from apps.knowledge.embeddings import default_provider
    from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
    from apps.tenancy.audit import Actor

    load_before = load()
    held = max(options.queries // 2, options.searches + 10)
    progress(f"bench: chunking the Django source for {options.real + held} code chunks")
    chunks = django_python_chunks(options.real + held)
    real, held_out = chunks[: options.real], chunks[options.real :]
    provider = default_provider()
    provider.embed(["warm-up"])
    progress(f"bench: embedding {len(chunks)} real chunks")
    started = time.perf_counter()
    vectors = provider.embed([chunk.text for chunk in chunks])
    embed_seconds = time.perf_counter() - started
    provider.cache.clear()
    copies = options.vectors - options.real
    base = np.concatenate([vectors[: options.real], noisy(vectors[: options.real], copies, seed=1)])
    held_vectors = vectors[options.real :][: options.queries // 2]
    queries = np.concatenate(
        [held_vectors, noisy(held_vectors, options.queries - len(held_vectors), seed=2)]
    ).astype(np.float32)
    # Interleave held-out and noisy, so that both kinds meet the same drift of the machine.
    order = np.argsort(np.arange(len(queries)) % len(held_vectors), kind="stable")
    queries = queries[order]
    is_real = order < len(held_vectors)
    progress("bench: exact search (numpy) for the recall")
    exact = exact_top(base, queries)
    numpy_exact = timed_ids(
        "numpy, exact (matrix-vector product, argpartition)",
        lambda vector: [int(row) for row in np.argpartition(-(base @ vector), K)[:K]],
        queries,
    )
    texts = [query_text(chunk) for chunk in held_out[: options.searches]]
    warmup_texts = [query_text(chunk) for chunk in held_out[options.searches : options.searches + 10]]

    with bench_world(options, "search") as world:
        source = services.source_create(
            organization=world.organization,
            kind=KnowledgeSource.Kind.REPOSITORY,
            name="django (bench)",
            actor=Actor.system(),
        )
        progress(f"bench: {options.vectors:,} PostgreSQL rows (bulk_create)")
        now = timezone.now()
        keys: list[str] = []
        rows: list[KnowledgeChunk] = []
        for row in range(options.vectors):
            chunk = real[row % options.real]
            copy_number = row // options.real  # 0: the real chunk itself
            digest = services.content_hash(chunk.text)
            key = services.chunk_key(source.pk, chunk.path, copy_number + 1, row, digest)
            keys.append(key)
            rows.append(
                KnowledgeChunk(
                    key=key,
                    source=source,
                    kind=source.kind,
                    path=chunk.path,
                    title=chunk.title[:300],
                    start_line=chunk.start_line,
                    end_line=chunk.end_line,
                    text=chunk.text,
                    content_hash=digest,
                    version=copy_number + 1,
                    indexed_at=now,
                    metadata={"chunk_kind": chunk.kind, "copy": copy_number},
                )
            )
        started = time.perf_counter()
        KnowledgeChunk.objects.bulk_create(rows, batch_size=2000)
        rows_seconds = time.perf_counter() - started
        del rows
        services.refresh_count(source)
        metadata = {"kind": source.kind, "source_id": source.pk}
        arguments = (options, world.organization, keys, base, metadata, queries, texts, warmup_texts)
        results = [measure_mode("Chroma embedded", *arguments)]
        collection = store.client().get_collection(store.current_index().name)
        hnsw = dict(collection.configuration_json.get("hnsw") or {})
        if not options.no_server:
            with chroma_server() as url, override_settings(CHROMA_URL=url):
                store.clients_reset()
                try:
                    results.append(measure_mode("Chroma server", *arguments))
                finally:
                    store.clients_reset()
    faiss = None
    if not options.no_faiss:
        faiss = faiss_run(
            base,
            queries,
            {
                "m": int(hnsw.get("max_neighbors", 16)),
                "ef_construction": int(hnsw.get("ef_construction", 100)),
                "ef_search": int(hnsw.get("ef_search", 100)),
            },
        )
    faiss_found = faiss[1] if faiss else []

    lines = [
        f"{options.vectors:,} vectors in one organization's collection: {options.real:,} real chunks' vectors"
        f" (Django .py chunks, our MiniLM) and {copies:,} noisy copies of them (Gaussian noise of norm"
        f" {NOISE}, re-normalised: cosine ~{1 / np.sqrt(1 + NOISE**2):.2f} to the original);",
        f"queries: {len(held_vectors)} held-out real chunks' vectors and {len(queries) - len(held_vectors)}"
        f" noisy versions of them; k={K}. chromadb {chromadb.__version__}, HNSW {hnsw.get('space', '?')}"
        f" M={hnsw.get('max_neighbors', '?')} construction_ef={hnsw.get('ef_construction', '?')}"
        f" search_ef={hnsw.get('ef_search', '?')}; {cores()} CPUs, load average {load_before} before,"
        f" {load()} after",
        "",
        table(
            [
                (
                    f"embedding {len(chunks):,} real chunks (ours, numpy MiniLM)",
                    f"{embed_seconds:.1f}",
                    f"{len(chunks) / embed_seconds:,.0f} chunks/s",
                ),
                (
                    f"{options.vectors:,} KnowledgeChunk rows (bulk_create)",
                    f"{rows_seconds:.1f}",
                    f"{options.vectors / rows_seconds:,.0f} rows/s",
                ),
                *(
                    (
                        f"{options.vectors:,} vectors, OrganizationIndex.upsert: {result.label}",
                        f"{result.upsert_seconds:.1f}",
                        f"{options.vectors / result.upsert_seconds:,.0f} vectors/s",
                    )
                    for result in results
                ),
            ],
            ("insert", "seconds", "rate"),
        ),
        "",
        f"(a, c, d) vector in, {K} ids out, one query at a time, {len(queries)} queries",
        table(
            [
                (
                    entry.label,
                    f"{entry.latencies.p50:.2f}",
                    f"{entry.latencies.p99:.2f}",
                    f"{recall_at_k(entry.ids, exact):.3f}",
                    f"{recall_at_k(entry.ids, exact, is_real):.3f}",
                    f"{recall_at_k(entry.ids, exact, ~is_real):.3f}",
                )
                for entry in [
                    *(found for result in results for found in result.found),
                    *faiss_found,
                    numpy_exact,
                ]
            ],
            ("index", "p50 ms", "p99 ms", "recall@10", "real queries", "noisy queries"),
        ),
        "",
    ]
    for result in results:
        ours = result.found[0]
        recall = recall_at_k(ours.ids, exact)
        lines.append(
            f"{result.label}: p50 {ours.latencies.p50:.2f} ms   goal <= {GOAL_QUERY_P50_MS:g} ms"
            f" {met(ours.latencies.p50 <= GOAL_QUERY_P50_MS)};   recall@10 {recall:.3f}"
            f"   goal >= {GOAL_RECALL} {met(recall >= GOAL_RECALL)}"
        )
        for entry in faiss_found:
            lines.append(
                f"  ours / {entry.label.split(' (')[0]}: p50 {ours.latencies.p50 / entry.latencies.p50:.1f}x,"
                f" p99 {ours.latencies.p99 / entry.latencies.p99:.1f}x"
            )
    if faiss is None and not options.no_faiss:
        lines.append("FAISS: not measured (no bench environment)")
    elif faiss:
        lines.append(f"({faiss[0]}; numpy with its BLAS threads)")
    overfetch = scoring.candidates(K)
    lines += [
        "",
        f"(b) services.search(organization, query text, k={K}) end to end, {len(texts)} queries"
        f" (a held-out chunk's title and first line, e.g. {texts[0][:60]!r})",
        table(
            [
                (
                    result.label,
                    f"{result.search.p50:.2f}",
                    f"{result.search.p99:.2f}",
                    f"{result.embed.p50:.2f}",
                    f"{result.overfetch.p50:.2f}",
                    f"{result.search.p50 - result.embed.p50 - result.overfetch.p50:.2f}",
                )
                for result in results
            ],
            (
                "index",
                "p50 ms",
                "p99 ms",
                "of which: embedding p50",
                f"index query n={overfetch} p50",
                "rest: PostgreSQL, ranking (difference)",
            ),
        ),
    ]
    return "\n".join(lines)


# Section: ingest rate ----------------------------------------------------------------------------


def ingest_rate(options: argparse.Namespace) -> str:
    import django

    django_setup()
    from apps.knowledge import services, store
    from apps.knowledge.chunking import chunk_file
    from apps.knowledge.embeddings import (
        DEFAULT_PROVIDER,
        MiniLMProvider,
        default_provider,
        register_provider,
    )
    from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
    from apps.tenancy.audit import Actor

    class TimedMiniLM(MiniLMProvider):
        """Our MiniLM, counting the time spent computing vectors (cache misses)."""

        seconds = 0.0
        texts = 0

        def _embed_batch(self, texts: list[str]) -> Any:
            started = time.perf_counter()
            vectors = super()._embed_batch(texts)
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)
            return vectors

    root = Path(django.__file__).parent
    files = sorted(path for path in root.rglob("*") if path.suffix in INGEST_SUFFIXES and path.is_file())
    available = len(files)
    if options.files and options.files < available:
        files = [files[number * available // options.files] for number in range(options.files)]
    load_before = load()
    register_provider(DEFAULT_PROVIDER, TimedMiniLM)  # a fresh provider: an empty cache
    try:
        provider = default_provider()
        assert isinstance(provider, TimedMiniLM)
        provider.load()
        with bench_world(options, "ingest") as world:
            source = services.source_create(
                organization=world.organization,
                kind=KnowledgeSource.Kind.REPOSITORY,
                name="django",
                actor=Actor.system(),
            )
            chunking = putting = 0.0
            progress(f"bench: indexing {len(files)} files of site-packages/django through chunks_put")
            started = time.perf_counter()
            for number, path in enumerate(files, 1):
                relative = str(path.relative_to(root.parent))
                begin = time.perf_counter()
                chunks = chunk_file(relative, path.read_text(errors="replace"))
                middle = time.perf_counter()
                services.chunks_put(source=source, path=relative, chunks=chunks)
                putting += time.perf_counter() - middle
                chunking += middle - begin
                if number % 100 == 0:
                    progress(f"bench: {number}/{len(files)} files, {time.perf_counter() - started:.0f} s")
            wall = time.perf_counter() - started
            total = KnowledgeChunk.objects.count()
            pending = KnowledgeChunk.objects.filter(indexed_at__isnull=True).count()
            in_index = store.current_index().count()
    finally:
        register_provider(DEFAULT_PROVIDER, MiniLMProvider)
    embedding = provider.seconds
    rest = putting - embedding
    scope = (
        "every file"
        if len(files) == available
        else f"{len(files):,} of its {available:,} files, spread evenly over the sorted tree"
    )
    lines = [
        f"The Django {django.__version__} source (site-packages/django: {', '.join(INGEST_SUFFIXES)};"
        f" {scope}; --files 0 for all)"
        f" through source_create and one chunks_put per file, embedded Chroma; {cores()} CPUs,"
        f" load average {load_before} before, {load()} after",
        "",
        table(
            [
                ("files", f"{len(files):,}", f"{len(files) / wall:,.1f} files/s"),
                ("chunks", f"{total:,}", f"{total / wall:,.1f} chunks/s"),
                ("wall time", f"{wall:.1f} s", ""),
                ("  chunking (chunk_file)", f"{chunking:.1f} s", f"{chunking / wall:.0%}"),
                (
                    f"  embedding ({provider.texts:,} texts computed, the rest cache hits)",
                    f"{embedding:.1f} s",
                    f"{embedding / wall:.0%}",
                ),
                (
                    "  PostgreSQL and the index (the rest of chunks_put)",
                    f"{rest:.1f} s",
                    f"{rest / wall:.0%}",
                ),
            ],
            ("ingest", "count / time", "rate / share"),
        ),
        "",
        f"index holds {in_index:,} vectors for {total:,} chunk rows; {pending} left pending"
        f" {'(consistent)' if in_index == total and not pending else '(NOT consistent)'}",
    ]
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "query-latency": query_latency,
    "ingest-rate": ingest_rate,
}


if __name__ == "__main__":
    # Only the FAISS child runs this module directly (in the bench environment).
    child = argparse.ArgumentParser(prog="python -m bench.knowledge_search")
    child.add_argument("--faiss-child", metavar="DIR", required=True)
    faiss_child(child.parse_args().faiss_child)
