"""insightface RecordIO training sets (``train.rec`` + ``train.idx`` + ``property``) read without mxnet.

Format (mxnet / dmlc RecordIO, as insightface's ``faces_webface_112x112``, ``faces_emore`` (MS1M), glint360k ship
it):

* ``train.idx``: text, one ``key<TAB>byte offset`` line per record;
* ``train.rec``: records, each ``uint32 magic 0xced7230a``, ``uint32 lrec`` (upper 3 bits: continuation flag,
  lower 29: payload length), the payload, zero padding to a multiple of 4 bytes. A payload holding the magic
  number at a 4-byte boundary is written in parts (flags 1 = first, 2 = middle, 3 = last) and joined with the
  magic number between them;
* payload: ``IRHeader`` = struct ``'IfQQ'`` (``flag``, ``label``, ``id``, ``id2``; 24 bytes); when ``flag > 0``
  the label is the ``flag`` float32 values that follow; then the encoded image (112 x 112 aligned JPEG);
* insightface's record 0 is a header: ``label = (first identity record, end)``; each identity record's label is the
  ``[first image record, end)`` range of that identity's images, so labels are known without reading any image.
  Without that header, every record's own label is read (one small read per record);
* ``property``: ``num_classes,height,width``.

:class:`RecordIOSet` gives ``{identity label: [record keys]}``; :func:`scan_recordio` turns it into the identity
tree that :class:`meer.data.identity_folders.IdentityFolderDataset` uses for a ``.rec`` root (identity names are
the integer labels). Records the index names but the file does not hold (a truncated ``.rec``) are left out with
one line each naming the file and the record; an undecodable image raises :class:`MeerError` naming both.
"""
from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from meer.utils.errors import MeerError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
_LEN_MASK = (1 << 29) - 1


@dataclass
class IRHeader:
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def unpack_record(payload: bytes) -> tuple[IRHeader, bytes]:
    """``(header, image bytes)`` of one record's payload (mxnet's ``recordio.unpack``)."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"record of {len(payload)} bytes is shorter than its {IR_SIZE}-byte header")
    flag, label, id1, id2 = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ValueError(f"record announces {flag} labels but holds {len(rest)} bytes after its header")
        label = tuple(float(v) for v in np.frombuffer(rest[:4 * flag], dtype="<f4"))
        rest = rest[4 * flag:]
    return IRHeader(flag, label, id1, id2), rest


def pack_record(label: float | tuple[float, ...], image: bytes = b"", id1: int = 0, id2: int = 0) -> bytes:
    """A record payload (mxnet's ``recordio.pack``): a scalar label, or a tuple written as ``flag`` floats."""
    if isinstance(label, (tuple, list, np.ndarray)):
        lab = np.asarray(label, dtype="<f4")
        return struct.pack(IR_FORMAT, lab.size, 0.0, id1, id2) + lab.tobytes() + image
    return struct.pack(IR_FORMAT, 0, float(label), id1, id2) + image


def frame(payload: bytes) -> bytes:
    """``payload`` framed as dmlc RecordIO writes it (split where it holds the magic number at 4-byte boundaries)."""
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == _MAGIC_BYTES]
    parts, start = [], 0
    for c in cuts:
        parts.append(payload[start:c])
        start = c + 4
    parts.append(payload[start:])
    out = b""
    for k, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else (1 if k == 0 else (3 if k == len(parts) - 1 else 2))
        out += struct.pack("<II", MAGIC, (flag << 29) | len(part)) + part + b"\0" * (-len(part) % 4)
    return out


def write_recordio(prefix: str | Path, payloads: dict[int, bytes]) -> tuple[Path, Path]:
    """Write ``prefix.rec`` and ``prefix.idx`` from ``{key: payload}`` (in key order)."""
    prefix = Path(prefix)
    rec, idx = prefix.with_suffix(".rec"), prefix.with_suffix(".idx")
    lines, data = [], bytearray()
    for key in sorted(payloads):
        lines.append(f"{key}\t{len(data)}")
        data += frame(payloads[key])
    rec.write_bytes(bytes(data))
    idx.write_text("\n".join(lines) + "\n")
    return rec, idx


@dataclass
class RecordIOSet:
    """An indexed ``.rec``: ``offsets`` per key, and the identity of every image record."""

    rec: Path
    offsets: dict[int, int]
    identities: dict[int, list[int]]  # label -> record keys
    num_classes: int | None = None  # from ``property``
    image_size: tuple[int, int] | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, rec: str | Path) -> "RecordIOSet":
        rec = Path(rec)
        idx = rec.with_suffix(".idx")
        if not rec.is_file():
            raise MeerError(f"RecordIO file not found: {rec}")
        if not idx.is_file():
            raise MeerError(f"{rec}: its index {idx.name} is missing (insightface sets ship train.rec + train.idx)")
        offsets: dict[int, int] = {}
        for n, line in enumerate(idx.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                key, off = int(parts[0]), int(parts[1])
            except (IndexError, ValueError):
                raise MeerError(f"{idx}:{n}: expected 'key<TAB>offset', got {line.strip()[:60]!r}") from None
            offsets[key] = off
        if not offsets:
            raise MeerError(f"{idx}: empty index")
        s = cls(rec, offsets, {})
        s._read_property()
        s._index_identities()
        return s

    def _read_property(self) -> None:
        prop = self.rec.parent / "property"
        if not prop.is_file():
            return
        try:
            vals = [int(v) for v in prop.read_text().strip().split(",")]
            self.num_classes, self.image_size = vals[0], (vals[1], vals[2])
        except (ValueError, IndexError):
            self.problems.append(f"{prop}: expected 'num_classes,height,width', got {prop.read_text()[:40]!r}")

    # ---- raw access ------------------------------------------------------------------------------------------
    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (``MeerError`` naming the file and record when it cannot be read)."""
        off = self.offsets.get(key)
        if off is None:
            raise MeerError(f"{self.rec}: no record {key} in its index")
        fd = os.open(self.rec, os.O_RDONLY)
        try:
            out = b""
            while True:
                head = os.pread(fd, 8, off)
                if len(head) < 8:
                    raise MeerError(f"{self.rec}: record {key} (offset {off}) lies past the end of the file "
                                    "(truncated .rec?)")
                magic, lrec = struct.unpack("<II", head)
                if magic != MAGIC:
                    raise MeerError(f"{self.rec}: record {key} (offset {off}) does not start with RecordIO's magic "
                                    "number (index and file do not match)")
                flag, length = lrec >> 29, lrec & _LEN_MASK
                part = os.pread(fd, length, off + 8)
                if len(part) < length:
                    raise MeerError(f"{self.rec}: record {key} is cut off after {len(part)} of {length} bytes "
                                    "(truncated .rec)")
                out += part
                off += 8 + length + (-length % 4)
                if flag in (0, 3):
                    return out
                out += _MAGIC_BYTES  # a split record: the parts were cut at the magic number
        finally:
            os.close(fd)

    def header(self, key: int) -> IRHeader:
        try:
            return unpack_record(self.read(key))[0]
        except ValueError as exc:
            raise MeerError(f"{self.rec}: record {key}: {exc}") from None

    def image(self, key: int) -> np.ndarray:
        """RGB uint8 image of record ``key``."""
        try:
            _, blob = unpack_record(self.read(key))
        except ValueError as exc:
            raise MeerError(f"{self.rec}: record {key}: {exc}") from None
        bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR) if blob else None
        if bgr is None:
            raise MeerError(f"{self.rec}: record {key} holds no decodable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    # ---- identities ------------------------------------------------------------------------------------------
    def _index_identities(self) -> None:
        size = self.rec.stat().st_size
        bad = {k for k, off in self.offsets.items() if off + 8 > size}
        for k in sorted(bad):
            self.problems.append(f"{self.rec}: record {k} (offset {self.offsets[k]}) lies past the end of the file "
                                 "(truncated .rec?); left out")
        alive = [k for k in self.offsets if k not in bad]
        if alive:  # a file cut short ends inside its last record: read that one whole
            last = max(alive, key=lambda k: self.offsets[k])
            try:
                self.read(last)
            except MeerError as exc:
                bad.add(last)
                self.problems.append(f"{exc}; left out")
        keys = [k for k in sorted(self.offsets) if k not in bad]
        h0 = self.header(0) if 0 in keys else None
        if h0 is not None and h0.flag > 0 and isinstance(h0.label, tuple) and len(h0.label) >= 2:
            # insightface layout: record 0 = (first identity record, end); identity records = image ranges
            first, end = int(h0.label[0]), int(h0.label[1])
            for label, ikey in enumerate(range(first, end)):
                if ikey not in self.offsets or ikey in bad:
                    self.problems.append(f"{self.rec}: identity record {ikey} is missing; identity {label} left out")
                    continue
                h = self.header(ikey)
                lo, hi = (int(h.label[0]), int(h.label[1])) if isinstance(h.label, tuple) else (0, 0)
                imgs = [k for k in range(lo, hi) if k in self.offsets and k not in bad]
                if imgs:
                    self.identities[label] = imgs
            return
        for k in keys:  # no header record: every record is an image with its own label
            try:
                h = self.header(k)
            except MeerError as exc:
                self.problems.append(f"{exc}; left out")
                continue
            label = h.label[0] if isinstance(h.label, tuple) else h.label
            self.identities.setdefault(int(label), []).append(k)

    @property
    def num_images(self) -> int:
        return sum(len(v) for v in self.identities.values())


_OPEN: dict[Path, RecordIOSet] = {}


def open_recordio(rec: str | Path, report: bool = True) -> RecordIOSet:
    """:meth:`RecordIOSet.open`, once per file per process; problems are printed once, one line each (20 at most)."""
    key = Path(rec).resolve()
    s = _OPEN.get(key)
    if s is None:
        s = _OPEN[key] = RecordIOSet.open(rec)
        if report and s.problems:
            for p in s.problems[:20]:
                print(f"meer: {p}", file=sys.stderr)
            if len(s.problems) > 20:
                print(f"meer: ... and {len(s.problems) - 20} more problems in {rec}", file=sys.stderr)
    return s


def is_recordio(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".rec"
