"""What every meer command shares: one-line errors instead of tracebacks, exit codes, end-of-run reports."""
from __future__ import annotations

import functools
import sys
from typing import Callable

from meer.utils.errors import MeerError
from meer.utils.folder_report import EXIT_NOTHING_PROCESSED, EXIT_OK, FolderReport

__all__ = ["EXIT_OK", "EXIT_NOTHING_PROCESSED", "EXIT_USAGE", "FolderReport", "run_cli"]

EXIT_USAGE = 2


def run_cli(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a ``main(argv) -> exit code`` so that a ``MeerError`` prints ``prog: error: <message>``
    and exits 2, and Ctrl-C exits 130 quietly. Unexpected exceptions still show their traceback."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def inner(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except MeerError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130

        return inner

    return wrap
