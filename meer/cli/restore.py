"""`meer-restore` (placeholder until its issue lands)."""
from __future__ import annotations

import sys

from meer.cli.common import not_implemented


def main(argv: list[str] | None = None) -> int:
    return not_implemented("meer-restore", "issue #5 (meer-restore)")


if __name__ == "__main__":
    sys.exit(main())
