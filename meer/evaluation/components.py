"""Choosing the run's methods and judges from names; what is unavailable is skipped with a note."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from meer.evaluation.harness import Components, EmbeddingMethod
from meer.evaluation.methods import TRUTH, MeerRestoration, NoRestore, TeleaInpainting
from meer.models.teacher import teacher_weights
from meer.utils.errors import MeerError

#: restoration methods (``meer.evaluation.methods``: blind = no ground truth, oracle = the ground-truth mask) and
#: embedding methods (``meer-embed``, ``eum``)
METHODS = ("none", "meer", "telea-blind", "meer-oracle", "telea", "meer-embed", "eum")
#: the methods that need the MEER model
NEEDS_MODEL = ("meer", "meer-oracle", "meer-embed")
JUDGES = ("dlib", "dlib-torch", "meer", "meer-flip", "facenet")


def check_names(names: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    bad = [n for n in names if n not in allowed]
    if bad:
        raise MeerError(f"unknown {what} {', '.join(bad)} (choose from {', '.join(allowed)})")
    return list(dict.fromkeys(names))


def file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def build_components(methods: list[str], judges: list[str], model: torch.nn.Module | None = None,
                     model_key: str = "meer", model_note: str | None = None, device: str = "cpu",
                     synthetic: bool = True, eum_path: Path | None = None) -> Components:
    """``model``: a loaded MEER (or ``None``, with ``model_note`` saying why)."""
    methods = check_names(methods, METHODS, "method")
    judges = check_names(judges, JUDGES, "judge")
    notes: list[str] = []
    comp = Components(judges=[], methods=[], notes=notes)
    dlib_judge = None
    from meer.evaluation.judge_dlib import DlibJudge, dlib_available, missing_reason

    if dlib_available():
        dlib_judge = DlibJudge()
        comp.detectability = dlib_judge
    for j in judges:
        if j == "dlib":
            if dlib_judge is None:
                notes.append(f"judge dlib skipped: {missing_reason()}")
            else:
                comp.judges.append(dlib_judge)
        elif j == "dlib-torch":
            from meer.evaluation.judge_dlib_torch import DlibTorchJudge

            try:
                comp.judges.append(DlibTorchJudge(device=device))
            except MeerError as exc:
                notes.append(f"judge dlib-torch skipped: {exc}")
        elif j == "meer":
            if model is None:
                notes.append(f"judge meer skipped: {model_note or 'no MEER model'}")
            else:
                from meer.evaluation.judge_meer import MeerJudge

                comp.judges.append(MeerJudge(model, f"meer-{model_key}", device=device))
        elif j == "meer-flip":
            if model is None:
                notes.append(f"judge meer-flip skipped: {model_note or 'no MEER model'}")
            else:
                from meer.evaluation.judge_meer import MeerJudge

                comp.judges.append(MeerJudge(model, f"meer-{model_key}-flip", name="meer-flip", device=device,
                                             flip=True))
        elif j == "facenet":
            from meer.evaluation.judge_facenet import FacenetJudge

            try:
                comp.judges.append(FacenetJudge(device=device))
            except MeerError as exc:
                notes.append(f"judge facenet skipped: {exc}")
    if not comp.judges:
        raise MeerError("no judge is available: " + "; ".join(notes))
    if "none" not in methods:
        methods = ["none"] + methods  # the masked baseline every gap is measured from
    for m in methods:
        if m in NEEDS_MODEL and model is None:
            notes.append(f"method {m} skipped: {model_note or 'no MEER model'}")
        elif m == "none":
            comp.methods.append(NoRestore())
        elif m == "telea":
            comp.methods.append(TeleaInpainting("telea", given=TRUTH))
        elif m == "telea-blind":
            if "meer" not in methods or model is None:
                why = (model_note or "no MEER model") if model is None else "method meer is not in this run"
                notes.append(f"method telea-blind skipped: it inpaints the region method meer replaced ({why})")
            else:
                comp.methods.append(TeleaInpainting("telea-blind", given="meer"))
        elif m in ("meer", "meer-oracle"):
            comp.methods.append(MeerRestoration(model, device=device, oracle=m == "meer-oracle"))
        elif m == "meer-embed":
            from meer.evaluation.judge_meer import MeerJudge

            own = next((j for j in comp.judges if j.name == "meer"), None)
            comp.embedding_methods.append(
                EmbeddingMethod("meer-embed", own or MeerJudge(model, f"meer-{model_key}", device=device)))
        elif m == "eum":
            method, why = eum_method(eum_path, comp.judges, device)
            if method is None:
                notes.append(f"method eum skipped: {why}")
            else:
                comp.embedding_methods.append(method)
    if synthetic:
        try:
            from meer.evaluation.prepare import meer_masker

            comp.masker = meer_masker()
        except ImportError as exc:
            notes.append(f"synthetic masks unavailable ({exc})")
    from meer.evaluation.quality import LpipsScorer, lpips_trunk_available

    if lpips_trunk_available():
        comp.lpips = LpipsScorer(device)
    else:
        notes.append("LPIPS skipped: AlexNet trunk weights are not in the local torch cache")
    return comp


def eum_method(path: Path | None, judges: list, device: str = "cpu") -> tuple[EmbeddingMethod | None, str]:
    """EUM/SRT on top of the judge whose embeddings it was trained on (``meer.models.eum.load_eum``)."""
    if path is None:
        return None, "no --eum checkpoint given (an eum_srt training checkpoint or a save_eum file)"
    from meer.models.eum import load_eum

    eum, embedder = load_eum(path, device=device)
    kind = str(embedder.get("kind", "unknown"))
    judge = next((j for j in judges if j.name == kind), None)
    if judge is None:
        return None, f"{path} was trained on '{kind}' embeddings and judge '{kind}' is not in this run"

    @torch.no_grad()
    def transform(vectors):
        x = torch.as_tensor(vectors, dtype=torch.float32, device=device)
        return eum(x).float().cpu().numpy()

    return EmbeddingMethod("eum", judge, transform), ""


def mark_teacher_judges(judges: list, teacher: str | None, notes: list[str]) -> list[str]:
    """Judges that share their weights with the teacher a model was trained against are not independent
    evidence for it: their names get a ``*`` (every table row shows it) and a note says why. Returns the
    marked names."""
    weights = teacher_weights(teacher)
    marked = []
    for j in judges:
        if weights and j.weights == weights:
            j.name = f"{j.name}*"
            marked.append(j.name)
    if marked:
        notes.append(f"{', '.join(marked)}: * = shares its weights with the model's training teacher ({teacher}); "
                     "not an independent judge of this model")
    return marked
