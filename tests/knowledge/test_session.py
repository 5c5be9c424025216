"""A run's session memory: what it remembers and finds, what it keeps past the run, and
how it forgets (LRU, TTL, the run's end, a sweep of abandoned runs)."""

import time
from typing import Any

import pytest

from apps.knowledge import session
from apps.knowledge.session import SessionMemory, session_end, session_find, session_for, sessions_sweep


def test_it_finds_what_was_noted_most_similar_first() -> None:
    memory = SessionMemory("run-find", max_items=10, ttl_seconds=60)
    memory.add("The test suite runs with `make test`; plain pytest misses the database fixtures.")
    memory.add("The payments service retries a declined card three times.", kind="observation")
    memory.add("CSS lives in static/css/app.css.")
    hits = memory.search("how do I run the tests?", k=2)
    assert len(hits) == 2
    assert "make test" in hits[0].item.text
    assert hits[0].similarity > hits[1].similarity
    assert [hit.item.kind for hit in memory.search("card declined retries", k=1)] == ["observation"]
    assert memory.search("card declined", k=3, kinds=["note"])[0].item.kind == "note"


def test_the_same_text_twice_is_one_item() -> None:
    memory = SessionMemory("run-twice", max_items=10, ttl_seconds=60)
    first = memory.add("Use the staging database for migrations.", kind="observation")
    again = memory.add("Use the staging database for migrations.", kind="observation", keep=True)
    assert first is again
    assert len(memory) == 1
    assert again.keep


def test_notes_are_kept_past_the_run_observations_when_marked_and_snippets_never() -> None:
    memory = SessionMemory("run-keep", max_items=10, ttl_seconds=60)
    memory.add("Note: the API client needs a token.")
    memory.add("Observation: 3 tests failed.", kind="observation")
    memory.add("Observation: the flaky test is test_upload.", kind="observation", keep=True)
    memory.add("def upload(): ...", kind="snippet", keep=True, chunk_key="s1-abc")
    assert [item.text for item in memory.kept_items()] == [
        "Note: the API client needs a token.",
        "Observation: the flaky test is test_upload.",
    ]
    assert memory.retrieved_keys == {"s1-abc"}


def test_the_least_recently_used_item_goes_first_when_full() -> None:
    memory = SessionMemory("run-lru", max_items=3, ttl_seconds=600)
    memory.add("alpha: the build uses poetry")
    memory.add("beta: the docs are in docs/")
    memory.add("gamma: deploys go through GitHub Actions")
    assert memory.search("which build tool?", k=1)[0].item.text.startswith("alpha")  # alpha used again
    memory.add("delta: the cache is Redis")
    assert sorted(item.text.split(":")[0] for item in memory.items) == ["alpha", "delta", "gamma"]
    assert memory.evicted == 1
    # The freed row is reused: searches still find the right texts.
    assert all(not hit.item.text.startswith("beta") for hit in memory.search("where are the docs?", k=3))
    assert memory.search("Redis cache", k=1)[0].item.text.startswith("delta")


def test_items_unused_for_the_ttl_are_forgotten() -> None:
    memory = SessionMemory("run-ttl", max_items=10, ttl_seconds=60)
    start = time.monotonic()
    memory.add("old: the linter is ruff", now=start)
    memory.add("fresh: the type checker is mypy", now=start + 50)
    assert memory.expire(now=start + 70) == 1
    assert [item.text for item in memory.items] == ["fresh: the type checker is mypy"]
    assert memory.search("linter", k=5, now=start + 71)[0].item.text.startswith("fresh")


def test_limits_come_from_the_settings(settings: Any) -> None:
    settings.KNOWLEDGE_SESSION_MAX_ITEMS = 2
    settings.KNOWLEDGE_SESSION_TTL_SECONDS = 5
    memory = session_for("run-settings")
    try:
        assert memory.max_items == 2
        assert memory.ttl_seconds == 5
    finally:
        session_end("run-settings")


def test_a_run_s_end_frees_its_memory_and_a_sweep_drops_abandoned_runs() -> None:
    ended = session_for("run-ended")
    assert session_for("run-ended") is ended
    ended.add("something worth a note")
    assert session_end("run-ended") == 1
    assert session_find("run-ended") is None
    assert len(ended) == 0
    assert session_end("run-ended") == 0

    abandoned = session_for("run-abandoned")
    abandoned.add("a note nobody will read")
    live = session_for("run-live")
    try:
        later = time.monotonic() + abandoned.ttl_seconds + 1
        live.add("still working", now=later)
        swept = sessions_sweep(now=later)
        assert swept["sessions_dropped"] >= 1
        assert session_find("run-abandoned") is None
        assert session_find("run-live") is live
        assert "run-live" in session.sessions_active()
    finally:
        session_end("run-live")


def test_bad_items_are_refused() -> None:
    memory = SessionMemory("run-bad", max_items=2, ttl_seconds=60)
    with pytest.raises(ValueError, match="empty"):
        memory.add("   ")
    with pytest.raises(ValueError, match="kind"):
        memory.add("text", kind="secret")
    assert memory.search("", k=3) == []
