"""Images in user messages: checked before anything is sent, routed only to models with
vision, and delivered in each provider's own shape, driven by the real SDKs against the
loopback fakes (OpenAI image_url parts, Anthropic image blocks, Gemini inline_data and
file_data parts)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from apps.core.errors import Invalid
from apps.llm import services
from apps.llm.context import estimating_counter, truncate_message
from apps.llm.errors import GatewayError
from apps.llm.gateway import gateway, gateway_reset
from apps.llm.providers.base import InvalidProviderRequest, ProviderConfig
from apps.llm.providers.registry import make_provider
from apps.llm.types import CallContext, ChatRequest, ImagePart, Message
from apps.tenancy.audit import Actor
from tests.conftest import World
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import chat, stream

pytestmark = pytest.mark.django_db

# A real 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
PHOTO_URL = "https://images.example.com/cat.jpg"


def look(
    model: str, text: str = "What is in this picture?", *images: ImagePart, **fields: Any
) -> ChatRequest:
    chosen = images or (ImagePart(PNG_URL),)
    return ChatRequest(model=model, messages=(Message(role="user", content=text, images=chosen),), **fields)


@pytest.fixture
def anthropic_platform(settings: Any, anthropic_fake: FakeAnthropic) -> FakeAnthropic:
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    settings.ANTHROPIC_BASE_URL = anthropic_fake.base_url
    settings.OPENAI_API_KEY = ""
    settings.GEMINI_API_KEY = ""
    gateway_reset()
    return anthropic_fake


@pytest.fixture
def gemini_platform(settings: Any, gemini_fake: FakeGemini) -> FakeGemini:
    settings.GEMINI_API_KEY = "gemini-test"
    settings.GEMINI_BASE_URL = gemini_fake.base_url
    settings.OPENAI_API_KEY = ""
    settings.ANTHROPIC_API_KEY = ""
    gateway_reset()
    return gemini_fake


# --- each provider's own shape ----------------------------------------------------------------


def test_openai_gets_image_url_parts_after_the_text(world: World, openai_platform: FakeOpenAI) -> None:
    response = chat(
        look("gpt-4o-mini", "Describe both.", ImagePart(PNG_URL), ImagePart(PHOTO_URL, detail="low")),
        CallContext(organization_id=world.alpha.pk),
    )
    assert response.message.content == "Echo: Describe both. [2 images]"  # the fake saw both
    (sent,) = openai_platform.chat_requests
    assert sent.json["messages"][0]["content"] == [
        {"type": "text", "text": "Describe both."},
        {"type": "image_url", "image_url": {"url": PNG_URL}},
        {"type": "image_url", "image_url": {"url": PHOTO_URL, "detail": "low"}},
    ]
    # An image counts in the estimate before the call: 765 tokens, 85 at detail "low".
    text_only = chat(
        ChatRequest(model="gpt-4o-mini", messages=(Message(role="user", content="Describe both."),)),
        CallContext(organization_id=world.alpha.pk),
    )
    assert response.route["prompt_tokens_estimate"] - text_only.route["prompt_tokens_estimate"] == 765 + 85


def test_a_stream_carries_the_images_too(world: World, openai_platform: FakeOpenAI) -> None:
    chunks, error = stream(look("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert error is None
    assert "".join(chunk.text for chunk in chunks) == "Echo: What is in this picture? [1 image]"
    assert openai_platform.images(openai_platform.chat_requests[0]) == [
        {"type": "image_url", "image_url": {"url": PNG_URL}}
    ]


def test_anthropic_gets_image_blocks_base64_for_data_urls_and_url_sources_otherwise(
    world: World, anthropic_platform: FakeAnthropic
) -> None:
    response = chat(
        look("claude-sonnet-4", "Compare them.", ImagePart(PNG_URL), ImagePart(PHOTO_URL)),
        CallContext(organization_id=world.alpha.pk),
    )
    assert response.message.content == "Echo: Compare them. [2 images]"
    (sent,) = anthropic_platform.message_requests
    assert sent.json["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(PNG).decode(),
                    },
                },
                {"type": "image", "source": {"type": "url", "url": PHOTO_URL}},
                {"type": "text", "text": "Compare them."},
            ],
        }
    ]


def test_gemini_gets_inline_data_for_data_urls_and_file_data_for_https(
    world: World, gemini_platform: FakeGemini
) -> None:
    response = chat(
        look("gemini-2.0-flash", "And these?", ImagePart(PNG_URL), ImagePart(PHOTO_URL)),
        CallContext(organization_id=world.alpha.pk),
    )
    assert response.message.content == "Echo: And these? [2 images]"
    (sent,) = gemini_platform.generate_requests
    parts = sent.json["contents"][0]["parts"]
    assert parts[0] == {"text": "And these?"}
    inline = parts[1].get("inlineData") or parts[1]["inline_data"]
    assert inline["mimeType" if "mimeType" in inline else "mime_type"] == "image/png"
    assert base64.b64decode(inline["data"]) == PNG  # the image's bytes, not the data: URL
    file_data = parts[2].get("fileData") or parts[2]["file_data"]
    assert file_data["fileUri" if "fileUri" in file_data else "file_uri"] == PHOTO_URL
    assert file_data["mimeType" if "mimeType" in file_data else "mime_type"] == "image/jpeg"


# --- routing: only models with vision ------------------------------------------------------------


def test_a_model_without_vision_is_refused_before_anything_is_sent(
    world: World, openai_platform: FakeOpenAI
) -> None:
    with pytest.raises(GatewayError) as caught:
        chat(look("gpt-4.1-nano"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 400
    assert caught.value.code == "vision_unsupported"
    assert "'gpt-4.1-nano' does not read images" in caught.value.message
    assert "gpt-4o-mini" in caught.value.message  # a model that does, for this organization
    assert openai_platform.requests == []


def test_the_local_model_reads_no_images(world: World, openai_platform: FakeOpenAI) -> None:
    with pytest.raises(GatewayError) as caught:
        chat(look("local"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.code == "vision_unsupported"
    # And the provider itself refuses, should anything reach it (before loading a model).
    provider = make_provider(ProviderConfig(kind="local"))
    with pytest.raises(InvalidProviderRequest, match="reads text only"):
        asyncio.run(provider.chat(look("smollm2-135m")))


def test_auto_picks_a_model_with_vision_when_images_come(world: World, openai_platform: FakeOpenAI) -> None:
    context = CallContext(organization_id=world.alpha.pk)
    plain = chat(ChatRequest(model="auto", messages=(Message(role="user", content="Hi there"),)), context)
    assert plain.route["model"] == "gpt-4.1-nano"  # the cheapest small model, no vision
    with_image = chat(look("auto", "Hi there"), context)
    assert with_image.route["model"] == "gpt-4o-mini"  # the cheapest small model with vision
    assert with_image.message.content == "Echo: Hi there [1 image]"
    assert openai_platform.chat_requests[-1].json["model"] == "gpt-4o-mini"


def test_auto_with_images_and_no_model_with_vision_says_so(world: World, settings: Any) -> None:
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = ""
    gateway_reset()
    with pytest.raises(GatewayError) as caught:
        chat(look("auto"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 400
    assert caught.value.code == "vision_unsupported"
    assert "No model this organization may use reads images" in caught.value.message


def test_fallbacks_without_vision_are_skipped_and_said_so(
    world: World, openai_platform: FakeOpenAI, settings: Any
) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0
    services.routing_policy_set(
        organization=world.alpha,
        fallbacks={"gpt-4o-mini": ["gpt-4.1-nano", "gpt-4.1-mini"]},
        actor=Actor(user=world.alice),
    )
    openai_platform.script(Reply.error(500, "down"))
    response = chat(look("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.route["model"] == "gpt-4.1-mini"
    assert {"model": "gpt-4.1-nano", "why": "does not read images"} in response.route["skipped"]
    assert [r.json["model"] for r in openai_platform.chat_requests] == ["gpt-4o-mini", "gpt-4.1-mini"]


# --- caching -------------------------------------------------------------------------------------


def test_the_exact_cache_tells_images_apart(world: World, openai_platform: FakeOpenAI) -> None:
    context = CallContext(organization_id=world.alpha.pk)
    chat(look("gpt-4o-mini", "Same words", ImagePart(PNG_URL)), context)
    other = chat(look("gpt-4o-mini", "Same words", ImagePart(PHOTO_URL)), context)
    no_image = chat(
        ChatRequest(model="gpt-4o-mini", messages=(Message(role="user", content="Same words"),)), context
    )
    again = chat(look("gpt-4o-mini", "Same words", ImagePart(PNG_URL)), context)
    assert other.route["cache"] is None
    assert no_image.route["cache"] is None
    assert again.route["cache"] == "l1"
    assert len(openai_platform.chat_requests) == 3


def test_the_semantic_cache_never_answers_a_request_with_images(
    world: World, openai_platform: FakeOpenAI, settings: Any
) -> None:
    settings.LLM_SEMANTIC_CACHE_MODEL = "text-embedding-3-small"
    gateway_reset()
    context = CallContext(organization_id=world.alpha.pk, semantic_cache=True, cache=False)
    chat(look("gpt-4o-mini", "What is this?", ImagePart(PNG_URL)), context)
    other = chat(look("gpt-4o-mini", "what is this", ImagePart(PHOTO_URL)), context)
    assert other.route["cache"] is None
    assert other.route["semantic_cache"].startswith("skipped: images in the request")
    assert openai_platform.requests_to("/embeddings") == []


# --- bad images: a 400 naming the problem, nothing sent ---------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ((Message(role="user", content="x", images=(ImagePart("http://example.com/a.png"),)),), "not http:"),
        ((Message(role="user", content="x", images=(ImagePart("ftp://example.com/a.png"),)),), "not ftp:"),
        (
            (Message(role="user", content="x", images=(ImagePart("data:text/plain;base64,aGVsbG8="),)),),
            "must hold an image",
        ),
        ((Message(role="user", content="x", images=(ImagePart("data:image/png,rawbytes"),)),), "base64"),
        ((Message(role="user", content="x", images=(ImagePart("data:image/png;base64,%%%"),)),), "not valid"),
        (
            (Message(role="user", content="x", images=tuple(ImagePart(PNG_URL) for _ in range(21))),),
            "At most 20 images",
        ),
        (
            (
                Message(role="user", content="x"),
                Message(role="assistant", content="y", images=(ImagePart(PNG_URL),)),
            ),
            "Only user messages may hold images",
        ),
    ],
)
def test_bad_images_are_a_400_and_nothing_is_sent(
    world: World, openai_platform: FakeOpenAI, messages: tuple[Message, ...], expected: str
) -> None:
    with pytest.raises(Invalid) as caught:
        chat(ChatRequest(model="gpt-4o-mini", messages=messages), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 400
    assert expected in caught.value.message
    assert openai_platform.requests == []


def test_an_image_over_20_mb_is_refused(world: World, openai_platform: FakeOpenAI) -> None:
    big = "data:image/png;base64," + base64.b64encode(bytes(21 * 1024 * 1024)).decode()
    with pytest.raises(Invalid) as caught:
        chat(look("gpt-4o-mini", "x", ImagePart(big)), CallContext(organization_id=world.alpha.pk))
    assert "at most 20 MB per image" in caught.value.message
    assert openai_platform.requests == []


def test_the_cost_estimate_counts_the_images(world: World, openai_platform: FakeOpenAI) -> None:
    context = CallContext(organization_id=world.alpha.pk)
    plain = gateway().estimate_cost(
        ChatRequest(model="gpt-4o-mini", messages=(Message(role="user", content="x"),)), context=context
    )
    seen = gateway().estimate_cost(
        look("gpt-4o-mini", "x", ImagePart(PNG_URL), ImagePart(PNG_URL)), context=context
    )
    assert seen["input_tokens"] - plain["input_tokens"] == 2 * 765
    assert seen["usd_low"] > plain["usd_low"]


def test_cutting_a_long_message_to_fit_keeps_its_images() -> None:
    message = Message(role="user", content="log line\n" * 5000, images=(ImagePart(PNG_URL),))
    cut = truncate_message(message, max_tokens=2000, count_tokens=estimating_counter("openai"))
    assert len(cut.content or "") < len(message.content or "")
    assert cut.images == message.images
    assert estimating_counter("openai")([cut]) <= 2000  # the image's 765 tokens counted in
