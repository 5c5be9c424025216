"""/v1/chat/completions beyond text: OpenAI's content arrays with images, and Agentyard's
extra body fields `fallbacks` and `timeout` (the openai SDK's `extra_body=`), driven by
the real `openai` SDK against the live ASGI server, whose gateway calls the loopback fake
OpenAI API with Alpha's own credentials."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm import test_openai_endpoint as endpoint
from tests.llm.test_openai_endpoint import Keys, raw_request, sdk

# The endpoint tests' fixtures: API keys of Alpha and Beta, and Alpha's own OpenAI key at the fake.
keys = endpoint.keys
alpha_openai = endpoint.alpha_openai

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
NO_CACHE = {"Cache-Control": "no-store"}


def image_message(url: str, text: str = "What is in this image?", **image: Any) -> Any:
    """A user message of OpenAI's content parts: the text, then the image."""
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url, **image}},
        ],
    }


def post(server: LiveServer, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, answer = raw_request(server, "POST", "/v1/chat/completions", key, json.dumps(body))
    return status, json.loads(answer)


# --- images ---------------------------------------------------------------------------------------


def test_an_image_reaches_the_provider_as_an_image_url_part(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    completion = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini", messages=[image_message(PNG_URL, detail="high")]
    )
    assert completion.choices[0].message.content == "Echo: What is in this image? [1 image]"
    (sent,) = alpha_openai.chat_requests
    assert sent.json["messages"][0]["content"] == [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "high"}},
    ]


def test_a_streamed_answer_about_an_image(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    stream = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[image_message("https://images.example.com/cat.png", "And this one?")],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Echo: And this one? [1 image]"
    assert alpha_openai.images(alpha_openai.chat_requests[0]) == [
        {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.png"}}
    ]


def test_a_photo_of_several_megabytes_is_taken(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    # 3 MB: over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB, for forms), within ours.
    photo = "data:image/jpeg;base64," + base64.b64encode(bytes(3 * 1024 * 1024)).decode()
    completion = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini", messages=[image_message(photo, "Big one")], extra_headers=NO_CACHE
    )
    assert completion.choices[0].message.content == "Echo: Big one [1 image]"
    assert alpha_openai.images(alpha_openai.chat_requests[0])[0]["image_url"]["url"] == photo


def test_a_model_without_vision_is_a_400_saying_so(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(asgi_server, keys.alpha).chat.completions.create(
            model="gpt-4.1-nano", messages=[image_message(PNG_URL)]
        )
    assert refused.value.code == "vision_unsupported"
    assert "does not read images" in refused.value.message
    assert alpha_openai.requests == []


def test_malformed_image_parts_are_400_naming_the_part_and_send_nothing(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    part = "messages[0].content[1]"
    cases: list[tuple[list[dict[str, Any]], str, str, str]] = [
        ([image_message("http://example.com/a.png")], f"{part}.image_url.url", "invalid_image", "not http:"),
        ([image_message("file:///etc/passwd")], f"{part}.image_url.url", "invalid_image", "not file:"),
        (
            [image_message("data:text/plain;base64,aGVsbG8=")],
            f"{part}.image_url.url",
            "invalid_image",
            "must hold an image",
        ),
        (
            [image_message("data:image/png;base64,not base64!")],
            f"{part}.image_url.url",
            "invalid_image",
            "not valid base64",
        ),
        ([image_message(PNG_URL, detail="ultra")], f"{part}.image_url.detail", "invalid_value", "detail"),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": PNG_URL}],
                }
            ],
            f"{part}.image_url",
            "invalid_request",
            "'url'",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": image_message(PNG_URL)["content"]},
            ],
            "messages[1].content[1]",
            "invalid_request",
            "Only user messages may hold images",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": PNG_URL}} for _ in range(21)],
                }
            ],
            "messages",
            "too_many_images",
            "At most 20 images",
        ),
    ]
    for messages, param, code, words in cases:
        status, answer = post(asgi_server, keys.alpha, {"model": "gpt-4o-mini", "messages": messages})
        assert status == 400, messages
        error = answer["error"]
        assert (error["param"], error["code"]) == (param, code), error
        assert words in error["message"], error
    assert alpha_openai.requests == []


def test_an_image_over_20_mb_is_a_400(asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI) -> None:
    big = "data:image/png;base64," + base64.b64encode(bytes(21 * 1024 * 1024)).decode()
    status, answer = post(asgi_server, keys.alpha, {"model": "gpt-4o-mini", "messages": [image_message(big)]})
    assert status == 400
    assert answer["error"]["code"] == "invalid_image"
    assert "at most 20 MB per image" in answer["error"]["message"]
    assert alpha_openai.requests == []


def test_a_body_over_32_mib_is_refused_before_it_is_parsed(asgi_server: LiveServer, keys: Keys) -> None:
    status, _, answer = raw_request(
        asgi_server, "POST", "/v1/chat/completions", keys.alpha, '{"x": "' + "a" * (33 * 1024 * 1024) + '"}'
    )
    assert status == 400
    assert json.loads(answer)["error"]["code"] == "request_too_large"


# --- fallbacks and timeout as extra body fields -------------------------------------------------


def test_fallbacks_and_timeout_from_the_sdks_extra_body(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, settings: Any
) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0
    alpha_openai.script(Reply.error(500, "down"), Reply.error(500, "down"), Reply(text="from the second"))
    raw = sdk(asgi_server, keys.alpha).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        extra_body={"fallbacks": ["gpt-4o", "gpt-4.1-nano"], "timeout": 20},
    )
    assert raw.parse().choices[0].message.content == "from the second"
    assert raw.headers["x-agentyard-model"] == "gpt-4.1-nano"
    assert raw.headers["x-agentyard-reason"] == "fallback for gpt-4o-mini, from the request's list"
    assert [(a["model"], a["outcome"]) for a in json.loads(raw.headers["x-agentyard-attempts"])] == [
        ("gpt-4o-mini", "provider_unavailable"),
        ("gpt-4o", "provider_unavailable"),
        ("gpt-4.1-nano", "ok"),
    ]
    assert [r.json["model"] for r in alpha_openai.chat_requests] == ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"]
    # The extra fields are ours: the provider never sees them.
    assert all("fallbacks" not in r.json and "timeout" not in r.json for r in alpha_openai.chat_requests)


def test_a_streams_fallback_from_the_request(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, settings: Any
) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0
    alpha_openai.script(Reply.error(503, "overloaded"), Reply(text="streamed by nano"))
    stream = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        extra_body={"fallbacks": ["gpt-4.1-nano"]},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed by nano"
    assert chunks[-1].model == "gpt-4.1-nano"


def test_the_requests_timeout_cuts_a_slow_provider(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, settings: Any
) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0
    alpha_openai.script(Reply.slow(6, text="too late"))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as failed:
        sdk(asgi_server, keys.alpha).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "slow"}],
            extra_body={"fallbacks": [], "timeout": 1},
        )
    assert time.monotonic() - started < 5
    assert failed.value.status_code == 502
    assert failed.value.code == "provider_timeout"


def test_bad_fallbacks_and_timeouts_are_400_naming_the_field(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    hello = [{"role": "user", "content": "hi"}]
    cases: list[tuple[dict[str, Any], str, str, str]] = [
        ({"fallbacks": "gpt-4o"}, "fallbacks", "invalid_type", "list of model names"),
        ({"fallbacks": ["gpt-4o", 7]}, "fallbacks", "invalid_type", "list of model names"),
        ({"fallbacks": ["gpt-17"]}, "fallbacks", "unknown_model", "'gpt-17'"),
        ({"fallbacks": ["claude-opus-4"]}, "fallbacks", "fallback_unusable", "no credentials"),
        ({"timeout": 0}, "timeout", "invalid_value", "between 1 and 600"),
        ({"timeout": 601}, "timeout", "invalid_value", "between 1 and 600"),
        ({"timeout": "30"}, "timeout", "invalid_type", "must be a number"),
    ]
    for extra, param, code, words in cases:
        status, answer = post(asgi_server, keys.alpha, {"model": "gpt-4o-mini", "messages": hello, **extra})
        assert status == 400, extra
        error = answer["error"]
        assert (error["param"], error["code"]) == (param, code), error
        assert words in error["message"], error
    assert alpha_openai.requests == []
