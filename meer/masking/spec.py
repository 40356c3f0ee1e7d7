"""What a synthetic mask is: kind, coverage, colours, texture, placement jitter and seed.

A ``MaskSpec`` is small, JSON-serialisable and complete: the seed fixes every finer detail (shape
variation within the kind, light direction, texture frequency, pleats, valve, fabric grain), so
``apply_mask(image, landmarks, MaskSpec.from_dict(json))`` redraws the same mask.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from meer.utils.errors import MeerError

KINDS = ("surgical", "n95", "kn95", "cloth", "procedural")
COVERAGES = ("over_nose", "below_nose", "chin_only")
# "image" stands for every ``image:<path>`` texture (a picture tiled over the mask)
TEXTURES = ("none", "stripes", "checks", "dots", "floral", "image")
TEMPLATE_PREFIX = "template:"
IMAGE_PREFIX = "image:"

# Realistic mask colours (sRGB), the palette sample_spec and MaskAugment draw from.
PALETTE: dict[str, tuple[int, int, int]] = {
    "light_blue": (150, 190, 222),
    "surgical_blue": (108, 160, 205),
    "sky": (120, 170, 228),
    "white": (238, 240, 242),
    "off_white": (226, 222, 212),
    "grey": (150, 152, 158),
    "dark_grey": (78, 80, 86),
    "black": (34, 35, 40),
    "surgical_green": (142, 196, 176),
    "pink": (236, 176, 194),
    "navy": (38, 50, 88),
    "beige": (212, 192, 164),
    "red": (168, 42, 52),
    "olive": (106, 112, 72),
    "purple": (120, 90, 150),
    "yellow": (226, 200, 90),
}

# jitter bounds (scale factor, shift in face units ~ inter-ocular distance, tilt in degrees)
SCALE_RANGE = (0.93, 1.07)
SHIFT_RANGE = 0.04
TILT_RANGE = 6.0


class MaskSpecError(MeerError):
    """A mask description that cannot be used."""


def _rgb(value: Any, name: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in PALETTE:
            raise MaskSpecError(f"unknown {name} {value!r} (palette: {', '.join(PALETTE)})")
        return PALETTE[value]
    try:
        rgb = tuple(int(round(float(c))) for c in value)
    except (TypeError, ValueError):
        raise MaskSpecError(f"{name} must be 3 integers 0-255 or a palette name, got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise MaskSpecError(f"{name} must be 3 integers 0-255, got {value!r}")
    return rgb  # type: ignore[return-value]


@dataclass
class MaskSpec:
    """One synthetic mask. ``shift`` is in face units (about one inter-ocular distance), ``tilt`` in
    degrees (positive turns the mask clockwise on the image), ``scale`` about the mask centre."""

    kind: str = "surgical"
    coverage: str = "over_nose"
    color: tuple[int, int, int] = PALETTE["light_blue"]
    texture: str = "none"
    texture_color: tuple[int, int, int] = PALETTE["white"]
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    tilt: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not (self.kind in KINDS or (
                self.kind.startswith(TEMPLATE_PREFIX) and len(self.kind) > len(TEMPLATE_PREFIX))):
            raise MaskSpecError(f"unknown mask kind {self.kind!r} (choose from {', '.join(KINDS)} or template:<name>)")
        if self.coverage not in COVERAGES:
            raise MaskSpecError(f"unknown coverage {self.coverage!r} (choose from {', '.join(COVERAGES)})")
        if not isinstance(self.texture, str) or not (self.texture in TEXTURES[:-1] or (
                self.texture.startswith(IMAGE_PREFIX) and len(self.texture) > len(IMAGE_PREFIX))):
            raise MaskSpecError(f"unknown texture {self.texture!r} (choose from {', '.join(TEXTURES[:-1])} or image:<path>)")
        self.color = _rgb(self.color, "color")
        self.texture_color = _rgb(self.texture_color, "texture_color")
        try:
            self.scale = float(self.scale)
            self.tilt = float(self.tilt)
            self.shift = (float(self.shift[0]), float(self.shift[1]))
            if isinstance(self.seed, bool) or int(self.seed) != self.seed:
                raise ValueError
            self.seed = int(self.seed)
        except (TypeError, ValueError, IndexError):
            raise MaskSpecError("scale and tilt must be numbers, shift two numbers and seed an integer") from None
        if not 0.5 <= self.scale <= 2.0:
            raise MaskSpecError(f"scale must be within 0.5-2.0, got {self.scale}")
        if not -45.0 <= self.tilt <= 45.0:
            raise MaskSpecError(f"tilt must be within -45..45 degrees, got {self.tilt}")
        if not all(-1.0 <= s <= 1.0 for s in self.shift):
            raise MaskSpecError(f"shift must be within -1..1 face units, got {self.shift}")
        if not 0 <= self.seed < 2**31:
            raise MaskSpecError(f"seed must be within 0..2**31-1, got {self.seed}")

    @property
    def is_template(self) -> bool:
        return self.kind.startswith(TEMPLATE_PREFIX)

    @property
    def template_name(self) -> str | None:
        return self.kind[len(TEMPLATE_PREFIX):] if self.is_template else None

    @property
    def texture_path(self) -> str | None:
        return self.texture[len(IMAGE_PREFIX):] if self.texture.startswith(IMAGE_PREFIX) else None

    @property
    def color_name(self) -> str | None:
        return next((n for n, c in PALETTE.items() if c == self.color), None)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["color"] = list(self.color)
        d["texture_color"] = list(self.texture_color)
        d["shift"] = list(self.shift)  # full precision: the JSON redraws the exact same pixels
        d["color_name"] = self.color_name
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = True) -> "MaskSpec":
        """Inverse of ``to_dict``. ``strict=False`` ignores other keys (e.g. a face entry of a
        ``meer-mask`` meta JSON, which adds the box and landmarks)."""
        if not isinstance(data, dict):
            raise MaskSpecError(f"a mask spec must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"color_name"}
        if unknown and strict:
            raise MaskSpecError(f"unknown mask spec key(s): {', '.join(sorted(unknown))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})
