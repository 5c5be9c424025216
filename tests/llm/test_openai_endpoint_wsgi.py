"""The OpenAI-compatible endpoint under a WSGI server (production runs gunicorn): the
async views run on a per-request loop there, so gateway calls go to one long-lived
loop and a stream is a plain generator. The real `openai` SDK against a threaded
WSGI server serving config.wsgi, in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import openai
import pytest

from apps.llm import selectors
from apps.llm.credentials import api_key_encrypt
from apps.llm.models import ProviderCredential, UsageDaily, UsageHourly
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import ApiKey
from tests.conftest import World
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def wsgi_port() -> Iterator[int]:
    from config.wsgi import application

    server = make_server(
        "127.0.0.1", 0, application, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="live-wsgi")
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


@pytest.fixture
def client(live_db: World, openai_fake: FakeOpenAI, wsgi_port: int) -> Iterator[openai.OpenAI]:
    ProviderCredential.objects.create(
        organization=live_db.alpha,
        provider="openai",
        api_key_encrypted=api_key_encrypt("sk-alpha-wsgi"),
        base_url=openai_fake.base_url,
    )
    _, raw = identity.api_key_create(
        actor=Actor(user=live_db.alice), organization=live_db.alpha, name="wsgi test", scopes=["llm:write"]
    )
    selectors.snapshots_clear()
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{wsgi_port}/v1", api_key=raw, max_retries=0)
    key_ids = list(ApiKey.objects.filter(name="wsgi test").values_list("pk", flat=True))
    UsageDaily.objects.filter(api_key_id__in=key_ids).delete()
    UsageHourly.objects.filter(api_key_id__in=key_ids).delete()
    ApiKey.objects.filter(pk__in=key_ids).delete()
    ProviderCredential.objects.filter(organization=live_db.alpha).delete()
    selectors.snapshots_clear()


def test_chat_streaming_and_models_under_wsgi(client: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text="first answer"), Reply(text="a streamed answer"), Reply(text="third"))
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}]
    )
    assert completion.choices[0].message.content == "first answer"
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "two"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a streamed answer"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Requests after a stream still work: the provider's pooled connections live on.
    again = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "3"}])
    assert again.choices[0].message.content == "third"
    assert "gpt-4o-mini" in {model.id for model in client.models.list()}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert refused.value.code == "unknown_model"
