"""Reading any image file a user may have, and writing images without surprises.

``read_image`` turns grayscale, palette, RGBA/LA, 16-bit, CMYK and EXIF-rotated files into an
8-bit RGB array for the models, and keeps what is needed to write a result back in the file's own
terms (alpha channel, bit depth, channel count): see ``LoadedImage.to_native``.
Every failure is an ``ImageError`` with a one-line reason.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from meer.utils.errors import ImageError
from meer.utils.files import atomic_write_bytes, ensure_new

Image.MAX_IMAGE_PIXELS = 12_000 * 12_000  # refuse decompression bombs with a clear message


@dataclass
class LoadedImage:
    """An image as the models see it (``rgb``) plus how it was stored (for writing results back)."""

    path: Path | None
    rgb: np.ndarray  # H x W x 3 uint8, EXIF orientation applied
    rgb16: np.ndarray | None  # H x W x 3 uint16 full-depth pixels of 16-bit files, else None
    alpha: np.ndarray | None  # H x W in the file's own depth, or None
    bit_depth: int  # 8 or 16
    channels: int  # 1 (gray), 3 (colour); alpha not counted
    mode: str  # the file's PIL mode, for messages and metadata

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.rgb.shape[1], self.rgb.shape[0]

    def to_native(self, rgb: np.ndarray, rgb16: np.ndarray | None = None) -> np.ndarray:
        """Express an RGB result in this file's layout: gray stays gray, alpha is re-attached,
        16-bit files stay 16-bit. ``rgb16`` may carry full-depth pixels (e.g. a result blended with
        ``self.rgb16``) to use instead of scaling the 8-bit ``rgb`` up."""
        if self.bit_depth == 16:
            out = rgb16 if rgb16 is not None else rgb.astype(np.uint16) * 257
        else:
            out = rgb
        if self.channels == 1:
            out = _to_gray(out)
        if self.alpha is not None:
            alpha = self.alpha
            if out.ndim == 2:
                out = np.stack([out, alpha.astype(out.dtype)], axis=-1)
            else:
                out = np.concatenate([out, alpha.astype(out.dtype)[..., None]], axis=-1)
        return out


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    w = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    g = (rgb.astype(np.float64) @ w).round()
    return g.clip(0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)


def read_image(path: str | Path) -> LoadedImage:
    """Read ``path`` into a ``LoadedImage``; raise ``ImageError`` with a one-line reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return decode_image(data, path)


def decode_image(data: bytes, path: Path | None = None) -> LoadedImage:
    name = str(path) if path is not None else "<bytes>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            img.load()
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unrecognised file format)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image too large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: unreadable or truncated image ({exc})") from None
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF: keep the pixels as stored
        pass
    mode = img.mode
    try:
        rgb, rgb16, alpha, depth, channels = _pil_to_arrays(img, data)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ImageError(f"{name}: image too small ({rgb.shape[1]}x{rgb.shape[0]})")
    return LoadedImage(path=path, rgb=np.ascontiguousarray(rgb), rgb16=rgb16, alpha=alpha, bit_depth=depth,
                       channels=channels, mode=mode)


def _pil_to_arrays(img: Image.Image, data: bytes):
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        g = np.asarray(img, dtype=np.int64)
        depth = 16 if (mode.startswith("I;16") or g.max(initial=0) > 255) else 8
        g16 = g.clip(0, 65535).astype(np.uint16) if depth == 16 else g.clip(0, 255).astype(np.uint8)
        rgb8 = (g16 // 257).astype(np.uint8) if depth == 16 else g16
        rgb16 = np.repeat(g16[..., None], 3, axis=-1) if depth == 16 else None
        return np.repeat(rgb8[..., None], 3, axis=-1), rgb16, None, depth, 1
    if mode == "F":
        g = np.asarray(img, dtype=np.float64)
        scale = 255.0 if g.max(initial=0) <= 1.0 else 1.0
        g8 = (g * scale).clip(0, 255).round().astype(np.uint8)
        return np.repeat(g8[..., None], 3, axis=-1), None, None, 8, 1
    if mode == "1" or mode == "L":
        g = np.asarray(img.convert("L"))
        return np.repeat(g[..., None], 3, axis=-1), None, None, 8, 1
    if mode == "LA" or mode == "La":
        a = np.asarray(img.convert("LA"))
        return np.repeat(a[..., :1], 3, axis=-1), None, a[..., 1].copy(), 8, 1
    if mode == "P":
        has_alpha = "transparency" in img.info
        conv = img.convert("RGBA" if has_alpha else "RGB")
        arr = np.asarray(conv)
        return arr[..., :3].copy(), None, (arr[..., 3].copy() if has_alpha else None), 8, 3
    if mode in ("RGBA", "RGBa", "PA"):
        arr = np.asarray(img.convert("RGBA"))
        return arr[..., :3].copy(), None, arr[..., 3].copy(), 8, 3
    if mode == "CMYK":
        return np.asarray(img.convert("RGB")), None, None, 8, 3
    if mode in ("RGB", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB"))
        deep = _read_png16(data) if data[:8] == b"\x89PNG\r\n\x1a\n" else None
        if deep is not None:
            return deep
        return arr, None, None, 8, 3
    try:
        return np.asarray(img.convert("RGB")), None, None, 8, 3
    except (ValueError, OSError) as exc:
        raise ImageError(f"unsupported image mode {mode} ({exc})") from None


def _read_png16(data: bytes):
    """48/64-bit colour PNGs: PIL reduces them to 8 bits, OpenCV keeps 16."""
    if len(data) < 26 or data[24] != 16:  # IHDR bit depth byte
        return None
    try:
        import cv2
    except ImportError:
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        return None
    alpha = arr[..., 3].copy() if arr.shape[2] == 4 else None
    rgb16 = np.ascontiguousarray(arr[..., 2::-1])
    rgb8 = (rgb16.astype(np.uint32) // 257).astype(np.uint8)
    return rgb8, rgb16, alpha, 16, 3


def encode_image(array: np.ndarray, suffix: str = ".png", quality: int = 95, png_level: int = 6) -> bytes:
    """Encode an H x W (x C) uint8/uint16 array; 16-bit and alpha survive as PNG. ``quality``: JPEG / WebP;
    ``png_level``: PNG's zlib level for 8-bit PNGs (0-9; 1 is half the time of the default 6 for ~5 % more bytes)."""
    suffix = suffix.lower()
    arr = np.asarray(array)
    if arr.dtype == np.uint16 or (arr.ndim == 3 and arr.shape[2] == 4 and suffix in (".jpg", ".jpeg")):
        suffix = ".png" if suffix in (".jpg", ".jpeg") else suffix
    if arr.dtype == np.uint16:
        import cv2

        if arr.ndim == 3:
            arr = arr[..., [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[..., ::-1]
        ok, buf = cv2.imencode(suffix if suffix in (".png", ".tif", ".tiff") else ".png", np.ascontiguousarray(arr))
        if not ok:
            raise ImageError("could not encode 16-bit image")
        return buf.tobytes()
    if arr.dtype != np.uint8:
        raise ImageError(f"cannot write array of dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        img = Image.fromarray(arr, mode="LA")
    else:
        img = Image.fromarray(arr)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}.get(suffix, "PNG")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    opts = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"compress_level": png_level} if fmt == "PNG" else {}
    img.save(buf, format=fmt, **opts)
    return buf.getvalue()


def write_image(path: str | Path, array: np.ndarray, overwrite: bool = False, quality: int = 95,
                png_level: int = 6, durable: bool = True) -> Path:
    """Atomically write ``array`` to ``path`` (format from the suffix); refuses to overwrite by default.
    ``durable``: see :func:`meer.utils.files.atomic_write_bytes`."""
    path = ensure_new(path, overwrite)
    atomic_write_bytes(path, encode_image(array, path.suffix or ".png", quality, png_level), durable=durable)
    return path
