"""`meer-mask` (placeholder until its issue lands)."""
from __future__ import annotations

import sys

from meer.cli.common import not_implemented


def main(argv: list[str] | None = None) -> int:
    return not_implemented("meer-mask", "issue #3")


if __name__ == "__main__":
    sys.exit(main())
