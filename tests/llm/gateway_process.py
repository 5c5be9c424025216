"""A second process calling the gateway, as a web or Celery worker does beside the test.

    python -m tests.llm.gateway_process '{"organization_id": 1, "run_id": "r", "text": "...", "calls": 10}'

Django is set up from the environment (DJANGO_SETTINGS_MODULE, DATABASE_URL, TEST_REDIS_URL,
OPENAI_API_KEY and OPENAI_BASE_URL leading to the test's fake). It prints "ready", waits
for a line on stdin, sends `calls` chats at once, and prints one JSON line: how many were
answered and the messages of those refused. Its usage is written at exit, as any worker's.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def main() -> None:
    import django

    django.setup()

    from asgiref.sync import async_to_sync

    from apps.llm.errors import BudgetExceeded
    from apps.llm.gateway import gateway
    from apps.llm.types import CallContext, ChatRequest, Message

    options = json.loads(sys.argv[1])
    context = CallContext(organization_id=options["organization_id"], run_id=options["run_id"], cache=False)
    request = ChatRequest(model="gpt-4o-mini", messages=(Message(role="user", content=options["text"]),))

    async def call() -> str | None:
        try:
            await gateway().chat(request, context=context)
        except BudgetExceeded as refused:
            return refused.message
        return None

    async def calls() -> dict[str, Any]:
        outcomes = await asyncio.gather(*(call() for _ in range(options["calls"])))
        await gateway().close_loop_providers()
        return {
            "answered": sum(outcome is None for outcome in outcomes),
            "refused": [outcome for outcome in outcomes if outcome is not None],
        }

    gateway().estimate_cost(request, context=context)  # the catalog and settings, read before the start
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(async_to_sync(calls)()), flush=True)


if __name__ == "__main__":
    main()
