"""``summary.csv`` and ``summary.json`` of a ``meer-restore`` run.

``summary.csv`` has one row per face, and one row (face columns empty) for each photo in which no
face was used. Columns:

=============  ==================================================================================
path           the input file, relative to INPUT
status         ``ok`` (faces found and handled), ``no_face``, ``too_small`` (image smaller than the
               smallest face searched), ``unreadable`` (not an image, truncated, empty...), ``error``
               (anything else that went wrong with this file; the run goes on)
reason         why a photo is not ``ok``, one line
width, height  the photo's size in pixels (empty when unreadable)
faces          number of faces handled in the photo
face           0-based face index (largest first); the crops are ``{stem}_{face:02d}.png``
face_status    ``restored`` or ``passthrough`` (predicted occlusion below ``--min-occlusion``)
x1 y1 x2 y2    detected face box in photo pixels (the whole image for ``--aligned`` inputs)
score          detection score (empty for ``--aligned`` inputs)
occlusion      fraction of the aligned 112 x 112 crop predicted occluded (occlusion map > 0.5)
id_cosine      cosine similarity of MEER's identity embeddings of the masked and the restored face
               (empty for faces passed through)
face_seconds   time spent on this face: alignment, its share of the batched model pass, paste-back
photo_seconds  time spent on the photo: reading, its share of detection, its faces, writing outputs
output         the written photo, relative to OUTPUT (empty when none was written)
=============  ==================================================================================

``summary.json`` holds the same per photo (``photos``: one object per photo with a ``faces`` list)
plus ``run``: command line, checkpoint, device, precision, versions, options, totals and timings.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meer.utils.files import atomic_write_bytes

PHOTO_STATUSES = ("ok", "no_face", "too_small", "unreadable", "error")

CSV_COLUMNS = ["path", "status", "reason", "width", "height", "faces", "face", "face_status", "x1", "y1", "x2",
               "y2", "score", "occlusion", "id_cosine", "face_seconds", "photo_seconds", "output"]


@dataclass
class PhotoRecord:
    """What happened to one input file."""

    path: str  # relative to INPUT
    status: str
    reason: str = ""
    width: int | None = None
    height: int | None = None
    faces: list[dict] = field(default_factory=list)  # FaceResult.to_dict() items
    seconds: float = 0.0
    output: str = ""  # relative to OUTPUT

    def __post_init__(self) -> None:
        if self.status not in PHOTO_STATUSES:
            raise ValueError(f"unknown photo status {self.status!r}")

    def to_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "reason": self.reason, "width": self.width,
                "height": self.height, "seconds": round(self.seconds, 4), "output": self.output,
                "faces": self.faces}

    def csv_rows(self) -> list[dict]:
        base = {"path": self.path, "status": self.status, "reason": self.reason, "width": self.width,
                "height": self.height, "faces": len(self.faces), "photo_seconds": round(self.seconds, 4),
                "output": self.output}
        if not self.faces:
            return [base]
        rows = []
        for face in self.faces:
            x1, y1, x2, y2 = face["box"]
            rows.append({**base, "face": face["face"], "face_status": face["status"], "x1": x1, "y1": y1,
                         "x2": x2, "y2": y2, "score": face["score"], "occlusion": face["occlusion"],
                         "id_cosine": face["id_cosine"], "face_seconds": face["seconds"]})
        return rows


def csv_text(records: list[PhotoRecord]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        for row in rec.csv_rows():
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def totals(records: list[PhotoRecord]) -> dict[str, int]:
    faces = [f for r in records for f in r.faces]
    counts = {s: sum(r.status == s for r in records) for s in PHOTO_STATUSES}
    return {"photos": len(records), "photos_ok": counts["ok"], "photos_skipped": len(records) - counts["ok"],
            **{f"photos_{s}": n for s, n in counts.items() if s != "ok"},
            "faces": len(faces), "faces_restored": sum(f["status"] == "restored" for f in faces),
            "faces_passthrough": sum(f["status"] == "passthrough" for f in faces)}


def write_summary(output_dir: Path, records: list[PhotoRecord], run: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.json`` (atomically, replacing earlier ones)."""
    csv_path = Path(output_dir) / "summary.csv"
    json_path = Path(output_dir) / "summary.json"
    atomic_write_bytes(csv_path, csv_text(records).encode("utf-8"))
    doc = {"run": {**run, "totals": totals(records)}, "photos": [r.to_dict() for r in records]}
    atomic_write_bytes(json_path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    return csv_path, json_path
