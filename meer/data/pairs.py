"""Verification pairs in LFW ``pairs.txt`` format: read, write and generate.

Format (as in LFW's ``pairs.txt`` / ``pairsDevTest.txt``)::

    10	300            <- header: number of folds, pairs of each kind per fold ("300" alone = 1 fold)
    Abel_Pacheco	1	4              <- genuine: name, image i, image j
    Abdel_Madi_Shabneh	1	Dean_Barker	1   <- impostor: name1, i, name2, j
    ...

Each fold is ``n`` genuine lines followed by ``n`` impostor lines. Image numbers are 1-based
positions in the identity's **sorted** file list (for LFW, ``i`` is ``Name_000i.jpg``). Fields are
tab-separated when the line has a tab (so names may contain spaces, e.g. ``Barack Obama``),
otherwise whitespace-separated. A file without a header is read as one fold.

Reading against a dataset never drops a pair silently: pairs whose identity folder or image
number does not exist are left out and counted in the returned :class:`PairsReport`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from meer.data.folders import image_files
from meer.utils.errors import MeerError
from meer.utils.files import atomic_write_bytes, ensure_new, read_text

FileLists = Mapping[str, Sequence[str | Path]]


@dataclass(frozen=True)
class Pair:
    """One verification pair; ``index_*`` are 1-based into the identity's sorted file list."""

    name_a: str
    index_a: int
    name_b: str
    index_b: int
    fold: int = 0
    path_a: Path | None = None
    path_b: Path | None = None

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b


@dataclass
class PairsReport:
    """What could not be resolved: ``(line number, identity)`` and ``(line number, identity, image number)``."""

    total: int = 0
    missing_identities: list[tuple[int, str]] = field(default_factory=list)
    missing_images: list[tuple[int, str, int]] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return len(self.missing_identities) + len(self.missing_images)

    @property
    def ok(self) -> bool:
        return self.dropped == 0

    def summary(self, limit: int = 5) -> str:
        """One line, e.g. ``dropped 3 of 600 pairs: 2 with a missing identity (A, B), 1 with a missing image (C #7)``."""
        if self.ok:
            return f"all {self.total} pairs resolved"
        parts = []
        if self.missing_identities:
            names = list(dict.fromkeys(n for _, n in self.missing_identities))
            more = f", ... {len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{len(self.missing_identities)} with a missing identity ({', '.join(names[:limit])}{more})")
        if self.missing_images:
            shown = [f"{n} #{i}" for _, n, i in self.missing_images[:limit]]
            more = f", ... {len(self.missing_images) - limit} more" if len(self.missing_images) > limit else ""
            parts.append(f"{len(self.missing_images)} with a missing image ({', '.join(shown)}{more})")
        return f"dropped {self.dropped} of {self.total} pairs: " + ", ".join(parts)


@dataclass
class PairsFile:
    pairs: list[Pair]
    n_folds: int
    per_fold: int  # genuine (= impostor) pairs per fold announced by the header
    report: PairsReport


def _split_fields(line: str) -> list[str]:
    return [f.strip() for f in line.split("\t")] if "\t" in line else line.split()


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_pairs(text: str, source: str = "<pairs>", problems: list[str] | None = None
                ) -> tuple[list[tuple[int, Pair]], int, int]:
    """Parse pairs text into ``[(line number, Pair)]``, ``n_folds``, ``per_fold`` (paths unset).

    By default a malformed line or a header that does not match the body raises :class:`MeerError`. With a
    ``problems`` list, each of them is appended there as one line naming the file and line, and the rest is
    read (a malformed line keeps its slot, so the fold of every other line stays as the header says)."""
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise MeerError(f"{source}: empty pairs file")
    head = _split_fields(lines[0][1])
    header_ints = [_parse_int(h) for h in head]
    if len(head) <= 2 and all(v is not None for v in header_ints):
        if len(head) == 2:
            n_folds, per_fold = header_ints
        else:
            n_folds, per_fold = 1, header_ints[0]
        if n_folds < 1 or per_fold < 1:
            raise MeerError(f"{source}:{lines[0][0]}: header must hold positive numbers, got {lines[0][1].strip()!r}")
        body = lines[1:]
        if len(body) != 2 * n_folds * per_fold:
            msg = (f"{source}: header announces {n_folds} fold(s) x {2 * per_fold} pairs = "
                   f"{2 * n_folds * per_fold} lines, found {len(body)}")
            if problems is None:
                raise MeerError(msg)
            problems.append(msg)
    else:
        n_folds, per_fold, body = 1, 0, lines
    out = []
    for k, (n, ln) in enumerate(body):
        f = _split_fields(ln)
        fold = k // (2 * per_fold) if per_fold else 0
        if len(f) == 3 and _parse_int(f[1]) is not None and _parse_int(f[2]) is not None:
            pair = Pair(f[0], int(f[1]), f[0], int(f[2]), fold)
        elif len(f) == 4 and _parse_int(f[1]) is not None and _parse_int(f[3]) is not None:
            pair = Pair(f[0], int(f[1]), f[2], int(f[3]), fold)
        else:
            msg = f"{source}:{n}: expected 'name i j' or 'name1 i name2 j', got {ln.strip()!r}"
            if problems is None:
                raise MeerError(msg)
            problems.append(msg)
            continue
        if pair.index_a < 1 or pair.index_b < 1:
            msg = f"{source}:{n}: image numbers are 1-based, got {ln.strip()!r}"
            if problems is None:
                raise MeerError(msg)
            problems.append(msg)
            continue
        out.append((n, pair))
    if not per_fold:
        genuine = sum(p.same for _, p in out)
        per_fold = genuine if genuine == len(out) - genuine else 0
    return out, n_folds, per_fold


class _FileIndex:
    """Sorted file lists per identity, from a mapping or lazily from ``root/<identity>/``."""

    def __init__(self, files: FileLists | str | Path):
        self.root = Path(files) if isinstance(files, (str, Path)) else None
        if self.root is not None and not self.root.is_dir():
            raise MeerError(f"dataset root not found: {self.root}")
        self.cache: dict[str, list[Path] | None] = (
            {} if self.root is not None else {k: sorted(Path(p) for p in v) for k, v in files.items()})

    def get(self, name: str) -> list[Path] | None:
        if self.root is None:
            return self.cache.get(name)
        if name not in self.cache:
            d = self.root / name
            self.cache[name] = image_files(d) if d.is_dir() and name not in ("", ".", "..") else None
        return self.cache[name]


def read_pairs(path: str | Path, files: FileLists | str | Path | None = None) -> PairsFile:
    """Read a pairs file; with ``files`` (a root of identity folders, or ``{name: paths}``) resolve
    each pair to image paths, reporting (not raising on) missing identities and images."""
    path = Path(path)
    text = read_text(path, "pairs file")
    parsed, n_folds, per_fold = parse_pairs(text, str(path))
    report = PairsReport(total=len(parsed))
    if files is None:
        return PairsFile([p for _, p in parsed], n_folds, per_fold, report)
    index = _FileIndex(files)
    pairs = []
    for n, p in parsed:
        la, lb = index.get(p.name_a), index.get(p.name_b)
        missing = [name for name, lst in ((p.name_a, la), (p.name_b, lb)) if lst is None]
        if missing:
            report.missing_identities.append((n, missing[0]))
            continue
        if p.index_a > len(la):
            report.missing_images.append((n, p.name_a, p.index_a))
            continue
        if p.index_b > len(lb):
            report.missing_images.append((n, p.name_b, p.index_b))
            continue
        pairs.append(replace(p, path_a=la[p.index_a - 1], path_b=lb[p.index_b - 1]))
    return PairsFile(pairs, n_folds, per_fold, report)


def format_pairs(pairs: Sequence[Pair]) -> str:
    """LFW text for ``pairs``: each fold must hold as many genuine as impostor pairs, the same number in
    every fold; folds are numbered ``0..k-1`` and written in order, genuine lines first."""
    if not pairs:
        raise MeerError("no pairs to write")
    by_fold: dict[int, tuple[list[Pair], list[Pair]]] = defaultdict(lambda: ([], []))
    for p in pairs:
        by_fold[p.fold][0 if p.same else 1].append(p)
    folds = sorted(by_fold)
    if folds != list(range(len(folds))):
        raise MeerError(f"fold numbers must be 0..{len(folds) - 1}, got {folds}")
    sizes = {(len(g), len(i)) for g, i in by_fold.values()}
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        raise MeerError("the pairs.txt format needs the same number of genuine and impostor pairs in every fold, "
                        f"got (genuine, impostor) per fold {[(len(g), len(i)) for g, i in by_fold.values()]}")
    n = next(iter(sizes))[0]
    for p in pairs:
        for name in (p.name_a, p.name_b):
            if "\t" in name or "\n" in name or not name.strip():
                raise MeerError(f"identity name {name!r} cannot be written to a pairs file")
    lines = [f"{len(folds)}\t{n}"]
    for f in folds:
        genuine, impostor = by_fold[f]
        lines += [f"{p.name_a}\t{p.index_a}\t{p.index_b}" for p in genuine]
        lines += [f"{p.name_a}\t{p.index_a}\t{p.name_b}\t{p.index_b}" for p in impostor]
    return "\n".join(lines) + "\n"


def write_pairs(path: str | Path, pairs: Sequence[Pair], overwrite: bool = False) -> Path:
    """Write ``pairs`` in LFW format (atomic; refuses to overwrite unless told)."""
    path = ensure_new(path, overwrite)
    atomic_write_bytes(path, format_pairs(pairs).encode("utf-8"))
    return path


def make_pairs(files: FileLists, n_folds: int = 10, per_fold: int = 300, seed: int = 0) -> list[Pair]:
    """Balanced genuine/impostor pairs in identity-disjoint folds, deterministic per ``seed``.

    Identities are shuffled and dealt to folds (largest first, snake order, so folds get similar
    numbers of images); no identity appears in two folds. Each fold gets the same number ``n`` of
    genuine and of impostor pairs, ``n = min(per_fold, what the poorest fold can give)``. Genuine
    pairs are drawn round-robin over the fold's identities (so a few identities with many photos
    do not dominate); impostor pairs join two different identities of the same fold. No pair repeats.
    """
    if n_folds < 1 or per_fold < 1:
        raise MeerError(f"n_folds and per_fold must be positive, got {n_folds} and {per_fold}")
    lists = {str(k): sorted(Path(p) for p in v) for k, v in files.items() if len(v) > 0}
    if len(lists) < 2 * n_folds:
        raise MeerError(f"{n_folds} identity-disjoint folds need at least {2 * n_folds} identities, got {len(lists)}")
    rng = np.random.default_rng(seed)
    names = sorted(lists)
    names = [names[i] for i in rng.permutation(len(names))]
    names.sort(key=lambda n: -len(lists[n]))  # stable: shuffled order among equal sizes
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for k, name in enumerate(names):
        r, c = divmod(k, n_folds)
        folds[c if r % 2 == 0 else n_folds - 1 - c].append(name)

    genuine_cap = [sum(len(lists[n]) * (len(lists[n]) - 1) // 2 for n in fold) for fold in folds]
    impostor_cap = [sum(len(lists[a]) * len(lists[b]) for a, b in combinations(fold, 2)) for fold in folds]
    n = min(per_fold, min(genuine_cap), min(impostor_cap))
    if n < 1:
        raise MeerError(f"cannot make genuine pairs for {n_folds} folds: some fold has no identity with 2+ images "
                        f"(identities with 2+ images: {sum(len(v) > 1 for v in lists.values())})")

    out: list[Pair] = []
    for f, fold in enumerate(folds):
        queues = {}
        for name in fold:
            combos = list(combinations(range(1, len(lists[name]) + 1), 2))
            queues[name] = [combos[i] for i in rng.permutation(len(combos))]
        genuine: list[Pair] = []
        depth = 0
        while len(genuine) < n:
            for name in fold:
                if depth < len(queues[name]) and len(genuine) < n:
                    i, j = queues[name][depth]
                    genuine.append(Pair(name, i, name, j, f))
            depth += 1
        seen: set[tuple] = set()
        impostor: list[Pair] = []
        while len(impostor) < n:
            a, b = rng.choice(len(fold), size=2, replace=False)
            na, nb = sorted((fold[a], fold[b]))
            i = int(rng.integers(1, len(lists[na]) + 1))
            j = int(rng.integers(1, len(lists[nb]) + 1))
            if (na, i, nb, j) in seen:
                continue
            seen.add((na, i, nb, j))
            impostor.append(Pair(na, i, nb, j, f))
        out += genuine + impostor
    return [replace(p, path_a=lists[p.name_a][p.index_a - 1], path_b=lists[p.name_b][p.index_b - 1]) for p in out]
