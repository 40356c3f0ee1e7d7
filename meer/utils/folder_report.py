"""The tally of a folder job: how many inputs were done, and which were skipped and why."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_NOTHING_PROCESSED = 1


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
