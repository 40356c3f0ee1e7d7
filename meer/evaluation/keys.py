"""The names of an evaluation run, typed: which crops a judge saw (:class:`ViewKey`) and which list of scored pairs
a number comes from (:class:`ScoreKey`). Both are small frozen dataclasses (hashable dictionary keys); the harness,
the report writer, the published-protocol runner and the notebook helpers all key their data by them, and their
string forms (``results.json`` keys, ``scores.npz`` entry names) are made here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the verification conditions, in report order
CONDITIONS = ("clean-vs-clean", "masked-vs-clean", "masked-vs-masked", "restored-vs-clean", "restored-vs-restored")

CLEAN, MASKED, RESTORED = "clean", "masked", "restored"
#: which role each side of a pair shows, per condition (probe side first)
SIDES = {
    "clean-vs-clean": (CLEAN, CLEAN),
    "masked-vs-clean": (MASKED, CLEAN),
    "masked-vs-masked": (MASKED, MASKED),
    "restored-vs-clean": (RESTORED, CLEAN),
    "restored-vs-restored": (RESTORED, RESTORED),
}
#: published protocols scored on the images as they come (``meer.evaluation.published``): one source, two conditions
AS_IS = "as-is"
AS_IS_CONDITIONS = ("as-given", "restored")
#: the method that restores nothing: its restored view *is* the masked view
NO_METHOD = "none"
#: what an embedding method's rows are judged as: the judge's name plus this
OWN_SPACE = " (own space)"
#: ``scores.npz`` entry names: ``source|judge|condition|method|scores`` and ``...|genuine``
NPZ_SEP = "|"


@dataclass(frozen=True)
class ViewKey:
    """One set of crops a judge scores: the clean photos, one mask source's masked crops, or one method's
    restorations of them. Build it with :meth:`clean`, :meth:`masked`, :meth:`restored` or :meth:`side`
    (``restored(source, "none")`` *is* ``masked(source)``: that method restores nothing)."""

    role: str
    source: str = ""
    method: str = ""

    def __post_init__(self):
        if self.role not in (CLEAN, MASKED, RESTORED):
            raise ValueError(f"view role must be clean, masked or restored, got {self.role!r}")
        if (self.role == CLEAN) != (self.source == ""):
            raise ValueError(f"a {self.role} view {'has no' if self.role == CLEAN else 'needs a'} mask source")
        if (self.role == RESTORED) != (self.method not in ("", NO_METHOD)):
            raise ValueError(f"only restored views name a method (and never {NO_METHOD!r}), got {self}")

    @classmethod
    def clean(cls) -> "ViewKey":
        return cls(CLEAN)

    @classmethod
    def masked(cls, source: str) -> "ViewKey":
        return cls(MASKED, source)

    @classmethod
    def restored(cls, source: str, method: str) -> "ViewKey":
        return cls.masked(source) if method == NO_METHOD else cls(RESTORED, source, method)

    @classmethod
    def side(cls, role: str, source: str, method: str = NO_METHOD) -> "ViewKey":
        """The view a pair side of ``role`` shows in a row of ``source`` and ``method``."""
        if role == CLEAN:
            return cls.clean()
        return cls.masked(source) if role == MASKED else cls.restored(source, method)

    @property
    def label(self) -> str:
        """``clean``, ``masked`` or ``restored:<method>``: the keys of the rank-1 and detectability entries."""
        return f"{RESTORED}:{self.method}" if self.role == RESTORED else self.role


@dataclass(frozen=True)
class ScoreKey:
    """One scored list of pairs: a mask source, a judge (``"<judge> (own space)"`` for embedding methods), a
    condition and the method shown on restored sides (``none`` otherwise)."""

    source: str
    judge: str
    condition: str
    method: str = NO_METHOD

    def __post_init__(self):
        allowed = AS_IS_CONDITIONS if self.source == AS_IS else CONDITIONS
        if self.condition not in allowed:
            raise ValueError(f"unknown condition {self.condition!r} for source {self.source!r} "
                             f"(one of {', '.join(allowed)})")
        if any(NPZ_SEP in f for f in (self.source, self.judge, self.condition, self.method)):
            raise ValueError(f"{NPZ_SEP!r} cannot appear in a score key: {self}")

    @property
    def base_judge(self) -> str:
        """The judge whose network made the embeddings (``meer`` for ``meer (own space)``)."""
        return self.judge[: -len(OWN_SPACE)] if self.judge.endswith(OWN_SPACE) else self.judge

    @property
    def npz_name(self) -> str:
        """``source|judge|condition|method``: the stem of this key's two ``scores.npz`` entries."""
        return NPZ_SEP.join((self.source, self.judge, self.condition, self.method))

    @classmethod
    def from_npz_name(cls, name: str) -> "ScoreKey":
        parts = name.split(NPZ_SEP)
        if len(parts) != 4:
            raise ValueError(f"not a scores.npz key: {name!r}")
        return cls(*parts)

    def view(self, side: int) -> ViewKey:
        """The view side ``0`` (probe) or ``1`` (reference) of these pairs shows."""
        return ViewKey.side(SIDES[self.condition][side], self.source, self.method)


def own_space(judge_name: str) -> str:
    """The judge name an embedding method's rows carry (scored in that judge's embedding space)."""
    return judge_name + OWN_SPACE
