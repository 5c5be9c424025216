"""Billing benchmarks, each a section that prints a table.

    python -m bench.billing [--section quota-check] [--section usage-recording] ...

Sections (SECTIONS): each is a function taking the parsed options and returning its
table as text; the billing engineers each add theirs as a separate function.

- quota-check (bench/billing_quota.py): 64 concurrent workspace starts racing for an
  organization's N free sandbox slots: the result must be exactly N started, with the
  starts' latency p50/p99 and the quota check's alone.
- usage-recording (bench/billing_usage.py): added latency per metered LLM call p50/p99
  (goal p50 <= 0.2 ms) and ledger rows written per second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bench import billing_quota, billing_usage
from bench.provisioning import progress

SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    # Quota enforcement under contention: bench/billing_quota.py.
    "quota-check": billing_quota.quota_check,
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
    billing_quota.add_arguments(parser)
    billing_usage.add_arguments(parser)
    options = parser.parse_args(argv)
    for name in options.section or list(SECTIONS):
        progress(f"== {name}")
        print(f"## {name}\n{SECTIONS[name](options)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
