"""Billing benchmarks, each a section that prints a table.

    python -m bench.billing [--section quota-check] [--section usage-recording] ...

Sections (SECTIONS): each is a function taking the parsed options and returning its
table as text; the billing engineers each add theirs as a separate function.

- quota-check: concurrent workspace starts racing for an organization's last sandbox
  slots (quota enforcement under contention): the result must be exactly N started,
  and the latency of a start's quota decision p50/p99.
- usage-recording (bench/billing_usage.py): added latency per metered LLM call p50/p99
  (goal p50 <= 0.2 ms) and ledger rows written per second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bench import billing_usage


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def quota_check(options: argparse.Namespace) -> str:
    raise NotImplementedError("the quota-check section is being written")


SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "quota-check": quota_check,
    # The ledger's section lives in bench/billing_usage.py (its own set-up and options).
    "usage-recording": billing_usage.usage_recording,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--section", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)"
    )
    parser.add_argument("--starts", type=int, default=64, help="quota-check: concurrent starts")
    parser.add_argument("--slots", type=int, default=8, help="quota-check: free sandbox slots")
    billing_usage.add_arguments(parser)
    options = parser.parse_args(argv)
    for name in options.section or list(SECTIONS):
        progress(f"== {name}")
        print(f"## {name}\n{SECTIONS[name](options)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
