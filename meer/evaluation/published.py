"""Published verification protocols on the files as they come: no synthetic masks, no generated pairs.

* ``meer-eval DATA --pairs pairs.txt --as-is``: identity folders (``DATA/<id>/*``, e.g. MFR2 with masked and
  unmasked photos mixed, or LFW) scored on the pairs of an LFW-format ``pairs.txt`` exactly as given. An image
  number ``i`` of identity ``name`` is the file ``name_000i.*`` when the folder has one (LFW's and MFR2's
  naming), otherwise the ``i``-th file of the sorted folder. Folds come from the file's header; a file without one
  (one fold) is split into ``--folds`` folds, genuine and impostor pairs dealt round-robin.
* ``meer-eval lfw.bin``: an insightface verification set (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...): a
  pickle of ``(list of encoded 112 x 112 aligned images, is-same list)``, pair ``k`` joining images ``2k`` and
  ``2k+1``. As in insightface's ``verification.py`` each image's embedding is the sum of the embeddings of the image
  and of its horizontal flip (for Euclidean judges the mean, the same up to scale), and the 10 folds are contiguous
  (``KFold(10, shuffle=False)``).

Faces are aligned into 112 ArcFace crops as in the rest of the harness (meer's detector for photos; aligned crops as
they are) and scored by the same judges with the same pair scorer; restoration methods given no mask (``meer``) and
the methods given their region (``telea-blind``) are scored as ``restored`` (both sides restored); oracle methods
(given the ground-truth mask) have nothing to work from here and are skipped with a note. Every verification row gives 10-fold accuracy with its 95% bootstrap
interval, AUC, EER, TAR at FAR 1e-2 / 1e-3 and FNMR at FMR100 / FMR1000.

Bad input never stops the run where the rest can go on: a malformed pairs line, a pair naming a missing identity or
image, an image that cannot be read or decoded each give one line naming the file and the entry (in the report and on
stderr) and only the pairs touching them are left out. A truncated ``.bin`` cannot be read at all: one line names the
file and the entry at which it ends.
"""
from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from meer.data.pairs import Pair, parse_pairs
from meer.evaluation.cache import EmbeddingCache
from meer.evaluation.dataset import EvalData, EvalImage, scan_eval_data
from meer.evaluation.geometry import crop_from_aligned
from meer.evaluation.judge import Judge
from meer.evaluation.keys import AS_IS, AS_IS_CONDITIONS, NO_METHOD, ScoreKey
from meer.evaluation.methods import NOTHING, TRUTH, Restored, given_label
from meer.evaluation.prepare import Face, prepare_faces
from meer.evaluation.scoring import PairScores, score_pairs
from meer.evaluation.cells import accuracy_cell, mask_cell, pct, tar_cell
from meer.utils.errors import MeerError
from meer.utils.files import read_text
from meer.utils.folder_report import FolderReport

PROG = "meer-eval"
SOURCE = AS_IS
#: conditions of a published-protocol run: the images as given, and both sides restored by a method
AS_GIVEN, RESTORED = AS_IS_CONDITIONS
#: problems printed to stderr one per line (all of them are in results.json)
PRINT_LIMIT = 20


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------
# insightface verification .bin files


@dataclass
class VerificationBin:
    """An insightface verification set: ``images[2k]`` and ``images[2k+1]`` form pair ``k``."""

    path: Path
    images: list  # RGB uint8 arrays; None where an entry could not be decoded
    issame: np.ndarray  # bool, one per pair
    problems: list[str] = field(default_factory=list)  # one line per bad entry

    @property
    def pairs(self) -> int:
        return int(self.issame.size)


class _SafeUnpickler(pickle.Unpickler):
    """Lists of bytes and booleans only (what insightface writes); nothing executable is resolved."""

    ALLOWED = {("_codecs", "encode"), ("builtins", "bytes"), ("builtins", "bytearray"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a verification .bin holds only images "
                                     "and an is-same list)")


_BYTES_OPS = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BINSTRING", "SHORT_BINSTRING", "BYTEARRAY8"}


def _entries_before_damage(raw: bytes) -> int:
    """How many byte strings (encoded images) a damaged pickle holds before it breaks off."""
    n = 0
    try:
        for op, _, _ in pickletools.genops(io.BytesIO(raw)):
            if op.name in _BYTES_OPS:
                n += 1
    except Exception:  # noqa: BLE001 - the point where it breaks is what we want
        pass
    return n


def _decode(blob) -> np.ndarray | None:
    if isinstance(blob, np.ndarray):
        blob = blob.tobytes()
    if isinstance(blob, str):  # a Python 2 str read without encoding='bytes'
        blob = blob.encode("latin1")
    if not isinstance(blob, (bytes, bytearray)) or not blob:
        return None
    bgr = cv2.imdecode(np.frombuffer(bytes(blob), np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_verification_bin(path: str | Path) -> VerificationBin:
    """Read an insightface verification ``.bin`` (no mxnet). Undecodable or non-square entries are ``None`` and
    listed in ``problems``; a file that is not such a pickle (e.g. truncated) raises :class:`MeerError` naming the
    file and the entry where it ends."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MeerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input
        n = _entries_before_damage(raw)
        raise MeerError(f"{path}: truncated or not an insightface verification .bin: it breaks off at entry {n} "
                        f"(after {n} image(s), before the is-same list; {type(exc).__name__}: {exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise MeerError(f"{path}: expected a pickled (images, is-same list) pair, got {type(obj).__name__}")
    bins, issame = obj
    try:
        bins = list(bins)
        issame = np.asarray(list(issame)).astype(bool).ravel()
    except (TypeError, ValueError) as exc:
        raise MeerError(f"{path}: images and is-same list must be sequences ({exc})") from None
    problems = []
    if len(bins) != 2 * issame.size:
        problems.append(f"{path}: {len(bins)} images for {issame.size} pairs (expected {2 * issame.size}); "
                        f"only the pairs with both images are scored")
        issame = issame[:len(bins) // 2]
    images = []
    for i, blob in enumerate(bins[:2 * issame.size]):
        im = _decode(blob)
        if im is None:
            problems.append(f"{path}: entry {i} (pair {i // 2}) is not a decodable image")
        elif im.shape[0] != im.shape[1]:
            problems.append(f"{path}: entry {i} (pair {i // 2}) is {im.shape[1]}x{im.shape[0]}, "
                            "aligned crops must be square")
            im = None
        images.append(im)
    if issame.size == 0:
        raise MeerError(f"{path}: holds no pair")
    return VerificationBin(path, images, issame, problems)


def write_verification_bin(path: str | Path, images: list[np.ndarray], issame: list[bool], ext: str = ".jpg",
                           protocol: int = 4) -> Path:
    """Write ``images`` (RGB uint8, pairs ``2k, 2k+1``) and ``issame`` in insightface's ``.bin`` layout."""
    if len(images) != 2 * len(issame):
        raise MeerError(f"{len(images)} images for {len(issame)} pairs")
    bins = []
    for im in images:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(np.asarray(im, np.uint8), cv2.COLOR_RGB2BGR))
        if not ok:
            raise MeerError(f"cannot encode an image as {ext}")
        bins.append(buf.tobytes())
    path = Path(path)
    path.write_bytes(pickle.dumps((bins, [bool(s) for s in issame]), protocol=protocol))
    return path


def contiguous_folds(n: int, k: int = 10) -> np.ndarray:
    """Fold of each of ``n`` pairs, as ``sklearn.model_selection.KFold(k, shuffle=False)`` splits them."""
    k = max(1, min(k, n))
    out = np.zeros(n, np.int64)
    for f, idx in enumerate(np.array_split(np.arange(n), k)):
        out[idx] = f
    return out


# --------------------------------------------------------------------------------------------------------------
# as-is identity folders + pairs.txt


def _numbered(files: list[Path], name: str) -> dict[int, Path]:
    """``{i: path}`` for files named ``<name>_<i>.<ext>`` (LFW / MFR2 naming)."""
    pat = re.compile(re.escape(name) + r"_(\d+)$")
    out = {}
    for p in files:
        m = pat.match(p.stem)
        if m:
            out.setdefault(int(m.group(1)), p)
    return out


def resolve_as_is_pairs(pairs_path: Path, data: EvalData, n_folds: int = 10
                        ) -> tuple[list[Pair], dict, list[str]]:
    """Pairs of an LFW-format file resolved to images of ``data``; malformed lines and missing identities / images
    give one problem line each (file, line, entry) and are left out."""
    problems: list[str] = []
    parsed, folds_in_file, per_fold = parse_pairs(read_text(pairs_path, "pairs file"), str(pairs_path), problems)
    malformed = sum(bool(re.match(re.escape(str(pairs_path)) + r":\d+:", q)) for q in problems)
    numbered = {name: _numbered(files, name) for name, files in data.files.items()}
    out: list[Pair] = []
    for n, p in parsed:
        paths = []
        for name, i in ((p.name_a, p.index_a), (p.name_b, p.index_b)):
            files = data.files.get(name)
            if files is None:
                problems.append(f"{pairs_path}:{n}: identity {name!r} not found under {data.root}")
                break
            path = numbered[name].get(i) if numbered[name] else (files[i - 1] if i <= len(files) else None)
            if path is None:
                problems.append(f"{pairs_path}:{n}: image {name} #{i} not found under {data.root / name}")
                break
            paths.append(path)
        else:
            out.append(Pair(p.name_a, p.index_a, p.name_b, p.index_b, p.fold, paths[0], paths[1]))
    how = f"{folds_in_file} folds from the file's header"
    if folds_in_file < 2 and out:
        counters = {True: 0, False: 0}
        dealt = []
        for p in out:
            dealt.append(Pair(p.name_a, p.index_a, p.name_b, p.index_b, counters[p.same] % n_folds, p.path_a, p.path_b))
            counters[p.same] += 1
        out = dealt
        how = f"no folds in the file: {n_folds} folds, genuine and impostor pairs dealt round-robin"
    info = {"source": str(pairs_path), "total": len(parsed) + malformed, "resolved": len(out), "folds": how}
    return out, info, problems


# --------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class PublishedOptions:
    data: Path  # identity folders (with ``pairs``) or a ``.bin``
    out: Path
    pairs: Path | None = None
    identities: Path | None = None
    aligned: bool = False
    folds: int = 10
    seed: int = 0
    cache_dir: Path | None = None
    bootstrap: int = 1000
    progress: bool = True
    plots: bool = True
    flip: bool | None = None  # None: the protocol's default (.bin: image + flip; folders: image only)
    locator: object = None  # images -> landmarks (default meer's detector); tests pass a fake


@dataclass
class _Set:
    """What is scored: 112 crops per image id, pairs over image ids."""

    name: str
    crops: dict[int, np.ndarray]
    labels: dict[int, str]  # image id -> printable entry (path or 'entry N')
    pairs: list[tuple[int, int, bool, int]]  # (image a, image b, same, fold)
    info: dict
    problems: list[str]
    images_total: int
    failed_images: int


def _bin_set(path: Path) -> _Set:
    vb = read_verification_bin(path)
    folds = contiguous_folds(vb.pairs, 10)
    crops = {i: crop_from_aligned(im) for i, im in enumerate(vb.images) if im is not None}
    pairs = [(2 * k, 2 * k + 1, bool(vb.issame[k]), int(folds[k])) for k in range(vb.pairs)]
    info = {"source": f"{path} (insightface verification .bin)", "total": vb.pairs, "resolved": vb.pairs,
            "folds": "10 contiguous folds (insightface verification.py)"}
    return _Set(path.name, crops, {i: f"entry {i}" for i in range(len(vb.images))}, pairs, info,
                list(vb.problems), len(vb.images), sum(im is None for im in vb.images))


def _folder_set(opts: PublishedOptions) -> _Set:
    ids = None
    if opts.identities is not None:
        from meer.data.splits import read_identity_list

        ids = read_identity_list(opts.identities)
    full = scan_eval_data(opts.data, ids, opts.aligned)
    pairs, info, problems = resolve_as_is_pairs(opts.pairs, full, opts.folds)
    if not pairs:
        raise MeerError(f"no pair of {opts.pairs} could be resolved under {opts.data}: "
                        + (problems[0] if problems else "the file holds no pair"))
    used = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    files: dict[str, list[Path]] = {}
    for path in used:
        files.setdefault(full.images[path].identity, []).append(path)
    sub = EvalData(full.root, files, {p: EvalImage(p, full.images[p].identity, False) for p in used}, opts.aligned)
    enrol = FolderReport()
    faces: dict[Path, Face] = prepare_faces(sub, enrol, opts.locator, opts.cache_dir,
                                            progress=opts.progress)
    for p, why in enrol.skipped:
        problems.append(f"{p}: {why}")
    index = {p: i for i, p in enumerate(used)}
    crops = {index[p]: f.crop for p, f in faces.items()}
    scored = [(index[p.path_a], index[p.path_b], p.same, p.fold) for p in pairs]
    return _Set(opts.data.name, crops, {i: str(p) for p, i in index.items()}, scored, info, problems,
                len(used), len(used) - len(faces))


def _embed(judge: Judge, crops: dict[int, np.ndarray], flip: bool, cache_dir: Path | None
           ) -> tuple[dict[int, np.ndarray], int, int]:
    """Embedding per image id (image + flip combined when ``flip``); ids the judge cannot enrol are left out."""
    cache = EmbeddingCache(cache_dir, judge)
    ids = list(crops)
    out: dict[int, np.ndarray] = {}
    for s in range(0, len(ids), 64):
        chunk = ids[s:s + 64]
        batch = np.stack([crops[i] for i in chunk])
        res = cache.embed(batch)
        vecs, oks = [res.vectors], [res.ok]
        if flip:
            resf = cache.embed(np.ascontiguousarray(batch[:, :, ::-1]))
            vecs.append(resf.vectors)
            oks.append(resf.ok)
        for j, i in enumerate(chunk):
            good = [v[j].astype(np.float64) for v, o in zip(vecs, oks) if o[j]]
            if good:
                # insightface sums image + flip embeddings; for a Euclidean judge the mean keeps its scale
                out[i] = np.mean(good, axis=0) if judge.metric == "euclidean" else np.sum(good, axis=0)
    cache.save()
    return out, cache.hits, cache.misses


def run_published(opts: PublishedOptions, comp) -> dict:
    """Score a ``.bin`` or ``DATA`` + ``pairs.txt`` as given; writes ``report.md``, ``results.json``,
    ``scores.npz`` (and ROC / histogram PNGs) into ``opts.out`` and returns the results."""
    t0 = time.time()
    is_bin = opts.data.suffix.lower() == ".bin"
    if not is_bin and opts.pairs is None:
        raise MeerError("--as-is needs --pairs (the protocol's pairs file)")
    if is_bin and opts.pairs is not None:
        raise MeerError(f"{opts.data}: a .bin holds its own pairs; do not pass --pairs")
    flip = is_bin if opts.flip is None else bool(opts.flip)
    opts.out.mkdir(parents=True, exist_ok=True)
    notes = list(comp.notes)
    if opts.locator is None:
        opts.locator = comp.locator
    st = _bin_set(opts.data) if is_bin else _folder_set(opts)
    for q in st.problems[:PRINT_LIMIT]:
        log(q)
    if len(st.problems) > PRINT_LIMIT:
        log(f"... and {len(st.problems) - PRINT_LIMIT} more problems (all in results.json)")
    if not st.crops:
        raise MeerError(f"{opts.data}: no image could be read" + (f" ({st.problems[0]})" if st.problems else ""))
    log(f"{len(st.pairs)} pairs over {st.images_total} images" + (" (each embedded with its flip)" if flip else ""))

    ids = list(st.crops)
    crops = np.stack([st.crops[i] for i in ids])
    views = {(AS_GIVEN, NO_METHOD): st.crops}
    regions: dict[str, np.ndarray] = {}
    given_of = {NO_METHOD: NOTHING}
    methods = [NO_METHOD]
    for r in [r for r in comp.methods if r.given in (NOTHING, TRUTH)] + \
             [r for r in comp.methods if r.given not in (NOTHING, TRUTH)]:
        if r.name == NO_METHOD:
            continue
        if r.given == TRUTH:
            notes.append(f"method {r.name} skipped: it is given the ground-truth mask (an oracle), and --as-is / .bin "
                         "images come without one")
            continue
        if r.given != NOTHING and r.given not in regions:
            notes.append(f"method {r.name} skipped: it is given the region method {r.given} replaced, and {r.given} "
                         "did not run")
            continue
        given = None if r.given == NOTHING else regions[r.given]
        parts = [r.restore(crops[s:s + 64], None if given is None else given[s:s + 64])
                 for s in range(0, len(ids), 64)]
        out = Restored(np.concatenate([q.crops for q in parts]), np.concatenate([q.regions for q in parts]))
        regions[r.name] = out.regions
        views[(RESTORED, r.name)] = dict(zip(ids, out.crops))
        given_of[r.name] = r.given
        methods.append(r.name)
    for em in comp.embedding_methods:
        notes.append(f"method {em.name} skipped: embedding methods are scored against unmasked references; as-is "
                     f"pairs mix masked and unmasked photos without saying which (judge '{em.judge.name}' scores "
                     "MEER's embedding directly)")

    rows, score_sets = [], {}
    for judge in comp.judges:
        for (cond, m), crops_of in views.items():
            emb, hits, misses = _embed(judge, crops_of, flip, opts.cache_dir)
            ps = score_pairs(judge, st.pairs, emb)  # both sides of a pair show the same view
            key = ScoreKey(SOURCE, judge.name, cond, m)
            row = ps.row(opts.seed, opts.bootstrap)
            if not ps.scored:
                row["error"] = "no pair could be scored"
            rows.append({"source": SOURCE, "judge": judge.name, "condition": cond, "method": m,
                         "oracle": False, "mask_given": given_label(given_of[m]), **row})
            score_sets[key] = ps
            log(f"judge {judge.name}, {cond} [{m}]: {hits} cached, {misses} computed")
    results = {
        "protocol": "insightface verification .bin" if is_bin else "as-is pairs (LFW pairs.txt format)",
        "data": str(opts.data), "aligned": bool(is_bin or opts.aligned), "flip": flip,
        "identities_file": str(opts.identities) if opts.identities else None,
        "images": st.images_total, "images_failed": st.failed_images, "pairs": st.info,
        "problems": st.problems, "seed": opts.seed, "space": "112 x 112 ArcFace crops", "sources": [SOURCE],
        "methods": methods, "mask_given": {m: given_label(g) for m, g in given_of.items()},
        "embedding_methods": [], "judges": [j.name for j in comp.judges], "verification": rows, "notes": notes,
    }
    results["seconds"] = round(time.time() - t0, 1)
    write_published_outputs(results, score_sets, opts)
    return results


def write_published_outputs(results: dict, score_sets: dict[ScoreKey, PairScores], opts: PublishedOptions) -> None:
    from meer.evaluation.report import score_figures, write_scores

    out = opts.out
    figures = score_figures(score_sets, SOURCE, str(results["data"]), out) if opts.plots else []
    write_scores(score_sets, out / "scores.npz")
    results["figures"] = {SOURCE: figures}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    (out / "report.md").write_text(render_published(results), encoding="utf-8")


def render_published(r: dict) -> str:
    L = ["# meer-eval report: published protocol, images as given", ""]
    p = r["pairs"]
    L.append(f"- protocol: {r['protocol']}; data: `{r['data']}`")
    L.append(f"- pairs: {p['source']}; {p['resolved']} of {p['total']} pairs resolved; {p['folds']}")
    L.append(f"- {r['images']} images, {r['images_failed']} unreadable or without a face (failures to enrol)")
    L.append(f"- embedding per image: " + ("image + horizontal flip (insightface)" if r["flip"] else "the image"))
    L.append(f"- methods: {', '.join(r['methods'])}; judges: {', '.join(r['judges'])}; {r['seconds']} s")
    for n in r["notes"]:
        L.append(f"- note: {n}")
    if r["problems"]:
        L.append(f"- {len(r['problems'])} problem(s) in the input (left out, the rest was scored):")
        L += [f"  - {q}" for q in r["problems"][:50]]
        if len(r["problems"]) > 50:
            L.append(f"  - ... {len(r['problems']) - 50} more in results.json")
    L += ["", "Accuracy: 10-fold verification accuracy (threshold chosen on the other folds) with its 95% bootstrap "
          "interval; TAR@FAR: true-accept rate at a false-accept rate of 1e-2 / 1e-3; FNMR@FMR100 / FMR1000 = 1 - "
          "TAR at FAR 1e-2 / 1e-3; FTE: share of images a judge could not enrol (their pairs are excluded). "
          "Conditions: as-given = the images exactly as given; restored = both sides restored by the method.", "",
          "| judge | condition | method | mask given | accuracy % (95% CI) | AUC | EER % | TAR@FAR1e-2 % | "
          "TAR@FAR1e-3 % | FNMR@FMR100 % | FNMR@FMR1000 % | pairs (gen/imp) | FTE % |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    footnote = False
    for v in r["verification"]:
        if "accuracy" in v:
            (tar2, c2), (tar3, c3) = tar_cell(v, 1e-2), tar_cell(v, 1e-3)
            footnote |= c2 or c3
            L.append(f"| {v['judge']} | {v['condition']} | {v['method']} | {mask_cell(v)} | {accuracy_cell(v)} | "
                     f"{v['auc']:.3f} | "
                     f"{pct(v['eer'])} | {tar2} | {tar3} | {pct(v['fmr100'])}{'*' if c2 else ''} | "
                     f"{pct(v['fmr1000'])}{'*' if c3 else ''} | {v['genuine']}/{v['impostor']} | {pct(v['fte_rate'])} |")
        else:
            L.append(f"| {v['judge']} | {v['condition']} | {v['method']} | {mask_cell(v)} | n/a ({v.get('error')}) "
                     "| | | | | | | "
                     f"{v['pairs_scored']} | {pct(v['fte_rate'])} |")
    if footnote:
        L += ["", "\\* fewer impostor pairs than 1/FAR: the rate is measured at zero false accepts (a bound)."]
    L.append("")
    for fig in r.get("figures", {}).get(SOURCE, []):
        L.append(f"![ROC {fig['judge']}]({fig['roc']}) ![scores {fig['judge']}]({fig['hist']})")
    return "\n".join(L) + "\n"
