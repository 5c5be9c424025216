"""The in-process local model (apps/llm/providers/local.py, apps/llm/batching.py): what
its request queue gains, and what it cannot.

    python -m bench.llm_local [--texts 64] [--chats 4] [--tokens 32]

(a) Embeddings, --texts requests of one short text each: awaited one after another
    (each its own decode) beside all at once (they wait together and are batched into
    one decode); texts/s for both and the ratio.
(b) Generation, --chats chats of --tokens tokens: one after another beside all at once.
    llama-cpp-python decodes one sequence at a time, so the queue serializes them: the
    total time is about the same and the latency of the last grows with the queue. The
    table shows it rather than claim a gain.
(c) The event loop while a chat generates: the largest delay of a 10 ms ticker, so a
    blocked loop (llama.cpp run on it) would show as the generation's whole duration.
"""

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import django


def setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    django.setup()


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def bench(texts: int, chats: int, tokens: int) -> list[tuple[str, str, str]]:
    from apps.llm.providers.base import ProviderConfig
    from apps.llm.providers.local import LocalProvider
    from apps.llm.types import ChatRequest, Message

    provider = LocalProvider(ProviderConfig(kind="local"))
    model = provider.model
    model.llama()
    model.embedder()  # loading is not what this measures
    inputs = [f"note {n}: the build failed on step {n % 7} after the dependency update" for n in range(texts)]
    await provider.embed("local", inputs[:2])

    async def one_by_one() -> None:
        for text in inputs:
            await provider.embed("local", [text])

    async def together() -> None:
        await asyncio.gather(*(provider.embed("local", [text]) for text in inputs))

    rows: list[tuple[str, str, str]] = []
    sequential = await timed(one_by_one)
    batches_before = model.embeddings.batches
    concurrent = await timed(together)
    batches = model.embeddings.batches - batches_before
    rows.append(("embeddings one by one", f"{texts / sequential:,.0f} texts/s", f"{texts} decodes"))
    rows.append(
        ("embeddings all at once", f"{texts / concurrent:,.0f} texts/s", f"{batches} batched decodes")
    )
    rows.append(("  gain from batching", f"{sequential / concurrent:.2f}x", ""))

    def ask(n: int) -> ChatRequest:
        return ChatRequest(
            model="local",
            messages=(Message(role="user", content=f"Write a story about ship number {n}."),),
            max_tokens=tokens,
            temperature=0,
        )

    latencies: list[float] = []

    async def chat(n: int) -> None:
        latencies.append(await timed(lambda: provider.chat(ask(n))))

    async def chats_in_turn() -> None:
        for n in range(chats):
            await chat(n)

    async def chats_at_once() -> None:
        await asyncio.gather(*(chat(n) for n in range(chats)))

    generated = model.generated_tokens
    in_turn = await timed(chats_in_turn)
    rows.append(
        (
            f"{chats} chats one after another",
            f"{(model.generated_tokens - generated) / in_turn:,.0f} tokens/s",
            f"p50 latency {statistics.median(latencies) * 1000:,.0f} ms",
        )
    )
    latencies.clear()
    generated = model.generated_tokens
    at_once = await timed(chats_at_once)
    rows.append(
        (
            f"{chats} chats at once (serialized)",
            f"{(model.generated_tokens - generated) / at_once:,.0f} tokens/s",
            f"p50 {statistics.median(latencies) * 1000:,.0f} ms, last {max(latencies) * 1000:,.0f} ms",
        )
    )

    lag = 0.0
    running = True

    async def ticker() -> None:
        nonlocal lag
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = max(lag, time.perf_counter() - before - 0.01)

    tick = asyncio.ensure_future(ticker())
    duration = await timed(lambda: provider.chat(ask(99)))
    running = False
    await tick
    rows.append(
        (
            "event loop during a chat",
            f"max lag {lag * 1000:,.1f} ms",
            f"while generating for {duration * 1000:,.0f} ms",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--chats", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    options = parser.parse_args()
    setup()
    load = os.getloadavg()[0]
    rows = asyncio.run(bench(options.texts, options.chats, options.tokens))
    print(f"\nLocal model (SmolLM2-135M-Instruct Q4_1, in process); load average before: {load:.2f}\n")
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
