"""Restoring every photo under a folder into the layout GFPGAN / CodeFormer users know.

``OUTPUT/``
  ``restored_imgs/``   full photos, same relative paths, names and formats as the inputs (gray, alpha
                       and 16-bit kept; GIF / PPM / PGM inputs are written as PNG)
  ``cropped_faces/``   aligned 112 x 112 input faces, ``<relative folder>/{stem}_{idx:02d}.png``
  ``restored_faces/``  the same faces restored (identical to the crop when passed through)
  ``masks/``           predicted occlusion maps (8-bit gray, 255 = occluded)
  ``cmp/``             ``[input | occlusion | restored]`` strip per face
  ``summary.csv``, ``summary.json``  see ``meer.inference.summary``

Bad files never stop the run: each is recorded with its status and reason. Photos without a face
are listed (``no_face``) and not written to ``restored_imgs``; photos whose faces were all passed
through are copied byte for byte.

Photos are decoded ahead in threads and the outputs encoded and written behind in one more thread (in input
order), so that file work overlaps detection and the model (``io_threads``; 0 does everything in one thread,
with the same files as result).
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from meer.inference.pipeline import Restorer, RestoreResult
from meer.inference.summary import PhotoRecord, totals, write_summary
from meer.inference.visuals import comparison_strip, occlusion_image
from meer.utils.errors import ImageError, MeerError, OutputExistsError
from meer.utils.files import IMAGE_EXTENSIONS, atomic_write_bytes, check_output_dir, iter_files
from meer.utils.images import LoadedImage, read_image, write_image

SUBDIRS = ("restored_imgs", "cropped_faces", "restored_faces", "masks", "cmp")
SUMMARY_FILES = ("summary.csv", "summary.json")
WRITABLE = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class FolderRun:
    """Outcome of ``restore_folder``."""

    output: Path
    records: list[PhotoRecord]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # read / detect / align / model / paste / write

    @property
    def totals(self) -> dict[str, int]:
        return totals(self.records)

    def exit_code(self) -> int:
        """0 when at least one photo was processed (skipped files are fine), 1 when none could be."""
        return 0 if self.totals["photos_ok"] > 0 else 1

    def final_line(self) -> str:
        t = self.totals
        secs = max(self.seconds, 1e-9)
        return (f"{t['photos']} photos ({t['photos_ok']} ok, {t['photos_skipped']} skipped), {t['faces']} faces "
                f"({t['faces_restored']} restored, {t['faces_passthrough']} passed through) in {self.seconds:.1f} s: "
                f"{t['photos'] / secs:.2f} photos/s, {t['faces'] / secs:.2f} faces/s -> {self.output}")


def check_output(input_path: str | Path, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse an OUTPUT inside an INPUT folder, and one that already holds results unless ``overwrite``.
    A single INPUT photo may have its OUTPUT next to it (``meer-restore me.jpg restored/``)."""
    if Path(input_path).is_file():
        out = Path(output_dir).resolve()
        if out == Path(input_path).resolve():
            raise MeerError(f"OUTPUT must be a folder, not the input photo itself: {output_dir}")
    else:
        out = check_output_dir(input_path, output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{output_dir} exists and is not a folder")
    existing = [name for name in SUBDIRS + SUMMARY_FILES if (out / name).exists()]
    if existing and not overwrite:
        shown = ", ".join(n + ("/" if n in SUBDIRS else "") for n in existing)
        raise OutputExistsError(f"{output_dir} already holds results ({shown}); use --overwrite to replace them")
    return out


def list_inputs(input_path: str | Path) -> tuple[Path, list[Path]]:
    """(root, files): every non-hidden file under INPUT, recursively (a single file is its own list)."""
    root = Path(input_path)
    if not root.exists():
        raise MeerError(f"input not found: {input_path}")
    files = list(iter_files(root))
    return (root.parent if root.is_file() else root), files


def face_keys(rel_paths: list[Path]) -> dict[Path, str]:
    """Crop name stems: the file's stem, or ``stem_ext`` when two inputs of a folder share a stem."""
    seen: dict[tuple[Path, str], int] = {}
    for rel in rel_paths:
        seen[(rel.parent, rel.stem)] = seen.get((rel.parent, rel.stem), 0) + 1
    return {rel: (rel.stem if seen[(rel.parent, rel.stem)] == 1 else f"{rel.stem}_{rel.suffix.lstrip('.').lower()}")
            for rel in rel_paths}


def io_threads_default() -> int:
    """Threads decoding photos ahead of the model (one more thread writes the outputs, in order): 2, or 0 (all in
    one thread) on a machine with 1-2 CPUs, where the threads only compete with the model's own threads
    (``benchmarks/bench_restore.py folder`` on 2 cores, three alternating runs: 12.1 vs 10.7 photos/s with masks,
    17.4 vs 16.9 without, for 0 vs 2)."""
    return 2 if (os.cpu_count() or 1) > 2 else 0


def restore_folder(input_path: str | Path, output_dir: str | Path, restorer: Restorer, *, overwrite: bool = False,
                   progress: bool = True, run_info: dict[str, Any] | None = None,
                   on_record: Callable[[PhotoRecord], None] | None = None,
                   io_threads: int | None = None) -> FolderRun:
    """Restore every image under ``input_path`` into ``output_dir`` (layout above) and write the summary.

    Reading and decoding run ahead in ``io_threads`` threads (default :func:`io_threads_default`) and one more
    thread encodes and writes the outputs, photo after photo in input order, while this thread detects, aligns,
    runs the model and pastes (decoding, encoding and file writes release the GIL). ``io_threads=0`` does all of
    it here, one step after the other: the same files come out (``tests/test_inference_folder.py``)."""
    out = check_output(input_path, output_dir, overwrite)
    root, files = list_inputs(input_path)
    rels = [p.relative_to(root) for p in files]
    keys = face_keys(rels)
    records: list[PhotoRecord] = []
    timings = {k: 0.0 for k in ("read", "detect", "align", "model", "paste", "write")}
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(files), unit="photo", desc="meer-restore", disable=not progress, dynamic_ncols=True)
    n_threads = io_threads_default() if io_threads is None else int(io_threads)
    reader = _Worker(n_threads, "meer-read")
    writer = _Worker(1 if n_threads > 0 else 0, "meer-write")
    items = list(zip(files, rels))
    window = 2 * restorer.batch_size  # photos decoded ahead
    reads: deque[Future] = deque()
    writes: deque[Future] = deque()
    next_item = 0
    n_faces = 0
    complete = False

    def read_ahead() -> None:
        nonlocal next_item
        while next_item < len(items) and len(reads) < window:
            path, rel = items[next_item]
            next_item += 1
            reads.append(reader.submit(_timed_read, path, rel, restorer))

    def finish(rec: PhotoRecord) -> None:
        nonlocal n_faces
        records.append(rec)
        n_faces += len(rec.faces)
        bar.update(1)
        bar.set_postfix(faces=n_faces, refresh=False)
        if on_record:
            on_record(rec)

    def collect_writes(keep: int) -> None:
        """Take the finished writes off the front (in input order); wait while more than ``keep`` are queued."""
        while writes and (writes[0].done() or len(writes) > keep):
            rec, dt = writes.popleft().result()
            timings["write"] += dt
            finish(rec)

    try:
        read_ahead()
        while reads:
            chunk = [reads.popleft() for _ in range(min(restorer.batch_size, len(reads)))]
            read_ahead()  # the next photos decode while this batch is restored
            loaded: list[tuple[Path, Path, LoadedImage, float]] = []
            for fut in chunk:
                path, rel, got, dt = fut.result()
                timings["read"] += dt
                if isinstance(got, PhotoRecord):
                    got.seconds = dt
                    finish(got)
                else:
                    loaded.append((path, rel, got, dt))
            for (path, rel, image, read_s), result in zip(loaded, _restore(restorer, [x[2] for x in loaded])):
                if isinstance(result, RestoreResult):
                    for k, v in result.timings.items():
                        timings[k] += v
                writes.append(writer.submit(_timed_write, out, path, rel, keys[rel], image, result, overwrite,
                                            read_s))
            collect_writes(keep=window)
        collect_writes(keep=0)
        complete = True
    finally:  # also after Ctrl-C or a crash: leave a summary of what was done ("complete": false)
        reader.close()
        if not complete:  # what was handed to the writer is written: list it
            while writes:
                try:
                    rec, dt = writes.popleft().result()
                except Exception:  # noqa: BLE001 - the error that stopped the run is the one reported
                    continue
                timings["write"] += dt
                finish(rec)
        writer.close()
        bar.close()
        seconds = time.perf_counter() - start
        order = {str(rel): i for i, rel in enumerate(rels)}
        records.sort(key=lambda r: order[r.path])
        run = dict(run_info or {})
        run.update({"input": str(input_path), "output": str(output_dir), "complete": complete,
                    "seconds": round(seconds, 3), "timings": {k: round(v, 4) for k, v in timings.items()},
                    "options": {"batch_size": restorer.batch_size, "faces": restorer.faces,
                                "aligned": restorer.aligned, "min_occlusion": restorer.min_occlusion,
                                "min_face": restorer.min_face, "detect_size": restorer.detect_size,
                                "dilate": restorer.dilate,
                                "feather": restorer.feather}})
        write_summary(out, records, run)
    return FolderRun(output=out, records=records, seconds=seconds, timings=timings)


class _Worker:
    """A thread pool, or (``threads=0``) a stand-in that runs each job at once in the calling thread."""

    def __init__(self, threads: int, name: str):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) if threads > 0 else None

    def submit(self, fn: Callable, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _timed_read(path: Path, rel: Path, restorer: Restorer) -> tuple[Path, Path, LoadedImage | PhotoRecord, float]:
    t0 = time.perf_counter()
    got = _read(path, rel, restorer)
    return path, rel, got, time.perf_counter() - t0


def _timed_write(out: Path, path: Path, rel: Path, key: str, image: LoadedImage, result: RestoreResult | Exception,
                 overwrite: bool, read_s: float) -> tuple[PhotoRecord, float]:
    t0 = time.perf_counter()
    rec = _write(out, path, rel, key, image, result, overwrite)
    dt = time.perf_counter() - t0
    rec.seconds = read_s + result.seconds + dt if isinstance(result, RestoreResult) else read_s
    return rec, dt


def _read(path: Path, rel: Path, restorer: Restorer) -> LoadedImage | PhotoRecord:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return PhotoRecord(str(rel), "unreadable", f"not an image file (extension {path.suffix or 'none'})")
    try:
        image = read_image(path)
    except ImageError as exc:
        reason = str(exc).replace(f"{path}: ", "", 1)
        return PhotoRecord(str(rel), "unreadable", reason)
    w, h = image.size
    if min(w, h) < restorer.min_face:
        return PhotoRecord(str(rel), "too_small", f"image is {w}x{h}, smaller than the smallest face searched "
                                                  f"({restorer.min_face} px)", width=w, height=h)
    return image


def _restore(restorer: Restorer, images: list[LoadedImage]) -> list[RestoreResult | Exception]:
    """Restore a batch; when the batch fails, retry photo by photo so only the culprit is an error."""
    if not images:
        return []
    try:
        return list(restorer.restore_images(images))
    except Exception as exc:  # noqa: BLE001 - one bad photo must not stop the run
        if len(images) == 1:
            return [exc]
    results: list[RestoreResult | Exception] = []
    for image in images:
        try:
            results.append(restorer.restore_image(image))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
    return results


def _error_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, MeerError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def _write(out: Path, path: Path, rel: Path, key: str, image: LoadedImage, result: RestoreResult | Exception,
           overwrite: bool) -> PhotoRecord:
    w, h = image.size
    if isinstance(result, Exception):
        return PhotoRecord(str(rel), "error", _error_reason(result), width=w, height=h)
    if not result.faces:
        return PhotoRecord(str(rel), "no_face", result.note or "no face found", width=w, height=h)
    try:
        target_rel = rel if rel.suffix.lower() in WRITABLE else rel.with_suffix(".png")
        target = out / "restored_imgs" / target_rel
        # per-photo outputs skip the fsync (atomic all the same): a folder job writes five files per face
        if result.changed:
            write_image(target, result.native, overwrite=overwrite, durable=False)
        else:
            if target.exists() and not overwrite:
                raise OutputExistsError(f"{target} already exists (use --overwrite to replace it)")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target_rel == rel:
                atomic_write_bytes(target, path.read_bytes(), durable=False)
            else:
                write_image(target, result.native, overwrite=overwrite, durable=False)
        for face in result.faces:
            name = f"{key}_{face.index:02d}.png"
            for sub, arr in (("cropped_faces", face.crop), ("restored_faces", face.restored),
                             ("masks", occlusion_image(face.occ_map)),
                             ("cmp", comparison_strip(face.crop, face.occ_map, face.restored))):
                # side images, four per face: fast zlib (half the encode time of level 6, ~5 % larger)
                write_image(out / sub / rel.parent / name, arr, overwrite=overwrite, png_level=1, durable=False)
    except (MeerError, OSError) as exc:
        return PhotoRecord(str(rel), "error", f"writing outputs failed: {_error_reason(exc)}", width=w, height=h,
                           faces=[f.to_dict() for f in result.faces])
    return PhotoRecord(str(rel), "ok", "", width=w, height=h, faces=[f.to_dict() for f in result.faces],
                       output=str(Path("restored_imgs") / target_rel))


