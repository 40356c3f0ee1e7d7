"""What every meer command shares: one-line errors instead of tracebacks, exit codes, end-of-run reports."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Callable

from meer.utils.errors import MeerError

EXIT_OK = 0
EXIT_NOTHING_PROCESSED = 1
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


def not_implemented(prog: str, issue: str) -> int:
    print(f"{prog}: not implemented yet ({issue})", file=sys.stderr)
    return EXIT_USAGE


@dataclass
class FolderReport:
    """Tally of a folder job: what was done and which inputs were skipped, and why."""

    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, path: object, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def print_skipped(self, prog: str, limit: int = 20) -> None:
        if not self.skipped:
            return
        print(f"{prog}: {len(self.skipped)} input(s) skipped:", file=sys.stderr)
        for path, reason in self.skipped[:limit]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(self.skipped) > limit:
            print(f"  ... and {len(self.skipped) - limit} more", file=sys.stderr)

    def exit_code(self) -> int:
        return EXIT_OK if self.done > 0 or not self.skipped else EXIT_NOTHING_PROCESSED
