"""Table cells of the evaluation reports: one formatting of each number for report.md, the notebooks' tables and
the benchmark summaries (no import of the harness, the report writer or matplotlib)."""
from __future__ import annotations


def pct(v, digits: int = 1) -> str:
    """A rate as a percentage string, ``"n/a"`` for ``None``."""
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


def curve_label(condition: str, method: str) -> str:
    """``condition``, with the method appended for the restored conditions."""
    return condition if not condition.startswith("restored") else f"{condition} [{method}]"


def accuracy_cell(v: dict) -> str:
    """``"92.8 (92.2-93.5)"``: a verification row's 10-fold accuracy with its 95% interval."""
    lo, hi = v["accuracy_ci95"]
    return f"{pct(v['accuracy'])} ({pct(lo)}-{pct(hi)})"


def gap_cell(v: dict) -> str:
    """The gap recovered, shown on ``restored-vs-clean`` rows only."""
    if v["condition"] != "restored-vs-clean":
        return ""
    gap = v.get("gap_recovered")
    return "n/a" if gap is None else f"{100 * gap:+.0f}%"


def tar_cell(v: dict, far: float) -> tuple[str, bool]:
    """TAR at ``far`` (1e-2 or 1e-3) as a percentage, and whether it is coarse: fewer impostor pairs than 1/FAR,
    so no threshold resolves that FAR and the rate is measured at zero false accepts (marked ``*``)."""
    coarse = v["impostor"] * far < 1
    return pct(v[f"tar_at_far_{far:.0e}".replace("e-0", "e-")]) + ("*" if coarse else ""), coarse


def mask_cell(v: dict) -> str:
    """What mask information a row's method had: ``ground truth (oracle)``, ``none (blind)`` or ``<method>'s region
    (blind)``; ``-`` where no method restored anything (unrestored conditions, method ``none``)."""
    given = v.get("mask_given")
    if given is None or v.get("method", "none") == "none" or not v.get("condition", "restored").startswith("restored"):
        return "-"
    if v.get("oracle"):
        return f"{given} (oracle)"
    if given == "nothing":
        return "none (blind)"
    return f"{given.removeprefix('region of ')}'s region (blind)"
