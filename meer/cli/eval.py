"""`meer-eval` (placeholder until its issue lands)."""
from __future__ import annotations

import sys

from meer.cli.common import not_implemented


def main(argv: list[str] | None = None) -> int:
    return not_implemented("meer-eval", "issue #6 (meer-eval)")


if __name__ == "__main__":
    sys.exit(main())
