"""The Chroma adapter on both modes (embedded and a real server): what is sent is found,
nearest first, within the filters; sending again overwrites; each organization has its
own collection; an unreachable server is a StoreUnavailable naming it."""

from typing import Any

import numpy as np
import pytest
from django_tenants.utils import schema_context

from apps.knowledge import store
from tests.conftest import World, free_port

pytestmark = pytest.mark.django_db


def _unit(*values: float) -> np.ndarray:
    vector = np.zeros(8, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def test_items_sent_are_found_nearest_first_within_the_filters(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        index = store.current_index()
        assert index.name == "ay_org_alpha"
        index.upsert(
            ["a", "b", "c"],
            np.stack([_unit(1, 0), _unit(1, 1), _unit(0, 1)]),
            [
                {"kind": "repository", "source_id": 1},
                {"kind": "document", "source_id": 2},
                {"kind": "repository", "source_id": 2},
            ],
        )
        hits = index.query(_unit(1, 0.1), 10)
        assert [hit.key for hit in hits] == ["a", "b", "c"]
        assert hits[0].similarity == pytest.approx(float(_unit(1, 0) @ _unit(1, 0.1)), abs=1e-5)
        assert [hit.key for hit in index.query(_unit(1, 0), 10, kinds=["repository"])] == ["a", "c"]
        assert [hit.key for hit in index.query(_unit(1, 0), 10, source_ids=[2])] == ["b", "c"]
        assert [hit.key for hit in index.query(_unit(1, 0), 10, kinds=["repository"], source_ids=[2])] == [
            "c"
        ]
        assert index.query(_unit(1, 0), 10, kinds=["experience"]) == []


def test_sending_a_key_again_overwrites_it(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        index = store.current_index()
        index.upsert(["a"], np.stack([_unit(1, 0)]), [{"kind": "note", "source_id": 1}])
        index.upsert(["a"], np.stack([_unit(0, 1)]), [{"kind": "note", "source_id": 1}])
        assert index.count() == 1
        assert index.query(_unit(0, 1), 1)[0].similarity == pytest.approx(1.0, abs=1e-5)
        index.delete(["a", "never-sent"])
        assert index.count() == 0


def test_deleting_a_source_removes_only_its_items(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        index = store.current_index()
        index.upsert(
            ["a", "b"],
            np.stack([_unit(1), _unit(0, 1)]),
            [{"kind": "note", "source_id": 1}, {"kind": "note", "source_id": 2}],
        )
        index.delete_source(1)
        assert index.keys() == ["b"]


def test_each_organization_searches_only_its_own_collection(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        store.current_index().upsert(
            ["alpha-secret"], np.stack([_unit(1)]), [{"kind": "note", "source_id": 1}]
        )
    with schema_context(world.beta.schema_name):
        beta = store.current_index()
        assert beta.name == "ay_org_beta"
        assert beta.query(_unit(1), 10) == []
        assert beta.count() == 0


def test_the_index_is_never_used_outside_an_organization(knowledge_index: Any) -> None:
    with pytest.raises(RuntimeError, match="outside an organization"):
        store.current_index()


def test_an_unreachable_server_is_unavailable_with_the_reason(settings: Any, world: World) -> None:
    settings.CHROMA_URL = f"http://127.0.0.1:{free_port()}"
    store.clients_reset()
    assert store.ping() is not None
    assert "not reachable" in str(store.ping())
    with schema_context(world.alpha.schema_name), pytest.raises(store.StoreUnavailable) as raised:
        store.current_index().count()
    assert raised.value.status == 503
    assert "Chroma server at 127.0.0.1" in raised.value.reason
    store.clients_reset()


def test_a_bad_chroma_url_is_a_clear_reason(settings: Any) -> None:
    settings.CHROMA_URL = "ftp://chroma.internal"
    store.clients_reset()
    assert "not an http(s) URL" in str(store.ping())
    store.clients_reset()


OTHER_PROCESS = """
import os, sys
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
django.setup()
import numpy as np
from django.conf import settings
from django_tenants.utils import schema_context
from apps.knowledge import store
settings.KNOWLEDGE_CHROMA_PATH = sys.argv[1]
with schema_context("org_alpha"):
    index = store.current_index()
    if sys.argv[2] == "write":
        vectors = np.eye(8, dtype=np.float32)[[1, 2]]
        index.upsert(["b", "c"], vectors, [{"kind": "note", "source_id": 1}] * 2)
    found = index.query(np.ones(8, dtype=np.float32), 10)
    print(",".join(sorted(index.keys())), ",".join(hit.key for hit in found))
"""


def _other_process(path: str, action: str) -> tuple[list[str], list[str]]:
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, path, action],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    keys, found = done.stdout.strip().splitlines()[-1].split(" ")
    return keys.split(","), sorted(found.split(","))


def test_embedded_processes_on_one_path_see_each_other_s_writes(knowledge_index: Any, world: World) -> None:
    """The web process searches what the worker indexed, and neither loses the other's writes."""
    with schema_context(world.alpha.schema_name):
        index = store.current_index()
        index.upsert(["a"], np.eye(8, dtype=np.float32)[[0]], [{"kind": "note", "source_id": 1}])
        assert [hit.key for hit in index.query(np.ones(8, dtype=np.float32), 10)] == ["a"]

        assert _other_process(str(knowledge_index), "write") == (["a", "b", "c"], ["a", "b", "c"])
        # This process had the collection open before: it sees the other's writes...
        assert sorted(hit.key for hit in index.query(np.ones(8, dtype=np.float32), 10)) == ["a", "b", "c"]
        # ...and its own next write keeps them.
        index.upsert(["d"], np.eye(8, dtype=np.float32)[[3]], [{"kind": "note", "source_id": 1}])
    assert _other_process(str(knowledge_index), "read") == (["a", "b", "c", "d"], ["a", "b", "c", "d"])
