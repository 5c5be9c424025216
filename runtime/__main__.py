"""`python -m runtime`: serve the runtime's gRPC API until SIGTERM.

Configured from the environment (runtime/config.py). Prints one line once it listens;
a bad setting is one line and exit status 2, a backend that cannot work on this host
(no bubblewrap, a port in use) one line and exit status 1.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from runtime import config as runtime_config
from runtime.backends import make_backend
from runtime.backends.base import BackendError
from runtime.server import ListenError, serve


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = runtime_config.load()
    except runtime_config.ConfigError as exc:
        print(f"runtime: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        backend = make_backend(config)
    except BackendError as exc:
        print(f"runtime: the {config.backend} backend cannot work here: {exc}", file=sys.stderr, flush=True)
        return 1

    def ready() -> None:
        print(
            f"runtime listening on {config.listen} backend={config.backend} root={config.root}",
            flush=True,
        )

    try:
        asyncio.run(serve(config, backend, ready=ready))
    except ListenError as exc:
        print(f"runtime: {exc}", file=sys.stderr, flush=True)
        return 1
    except BackendError as exc:
        print(f"runtime: the {config.backend} backend cannot work here: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
