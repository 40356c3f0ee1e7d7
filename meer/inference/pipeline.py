"""Restoring masked faces in photos: detect -> align -> MEER -> paste back only what was occluded.

``Restorer`` works on batches of photos (``restore_images``) or one at a time (``restore_image``):

1. faces and their 5 landmarks are found with ``meer.faces.detect.FaceDetector`` in one batched call
   (or, with ``aligned=True``, each image is taken as one face already aligned to the ArcFace template);
2. each face is aligned to a 112 x 112 ArcFace crop;
3. all crops of the batch go through MEER together (``batch_size`` faces per forward pass): predicted
   occlusion map, restored crop, and the identity embeddings of the masked and of the restored face;
4. faces whose predicted occluded fraction is below ``min_occlusion`` are passed through unchanged;
   the others are pasted back into the photo through ``meer.inference.region.paste_region`` (the
   pixels the model replaced, feathered inwards), so every photo pixel outside that region keeps its
   exact input value, alpha channel and bit depth included.

The model is any module with MEER's interface: ``forward(masked) -> MEEROutput`` with ``occ_map``,
``restored`` and ``embedding``, and ``embed(images)``. Nothing here imports training code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from meer.faces.align import align_face
from meer.faces.paste import paste_back, paste_faces
from meer.faces.template import template_for_size
from meer.inference.region import paste_region
from meer.inference.runtime import autocast
from meer.utils.tensors import images_to_tensor
from meer.utils.errors import MeerError
from meer.utils.images import LoadedImage

CROP_SIZE = 112

FaceStatus = Literal["restored", "passthrough"]


@dataclass
class FaceResult:
    """One face of a photo: where it is, what the model saw and made of it, and what was done."""

    index: int  # 0-based, in the order faces were processed (largest first)
    box: np.ndarray  # (4,) x1 y1 x2 y2 in photo pixels
    score: float | None  # detection score (None for --aligned inputs)
    landmarks: np.ndarray  # (5, 2) in photo pixels
    matrix: np.ndarray  # (2, 3) photo -> crop
    crop: np.ndarray  # 112 x 112 x 3 uint8, the aligned input face
    restored: np.ndarray  # 112 x 112 x 3 uint8, the face as pasted (== crop when passed through)
    occ_map: np.ndarray  # 112 x 112 float32 predicted occlusion probabilities
    region: np.ndarray  # 112 x 112 float32 blending weights used for the paste (zeros when passed through)
    occlusion: float  # fraction of the crop predicted occluded (occ_map > 0.5)
    id_cosine: float | None  # cosine of the masked and restored embeddings (None when passed through)
    status: FaceStatus
    seconds: float  # alignment + this face's share of the model pass + paste

    def to_dict(self) -> dict:
        return {
            "face": self.index,
            "status": self.status,
            "box": [round(float(v), 1) for v in self.box],
            "score": None if self.score is None else round(float(self.score), 4),
            "occlusion": round(float(self.occlusion), 4),
            "id_cosine": None if self.id_cosine is None else round(float(self.id_cosine), 4),
            "seconds": round(float(self.seconds), 4),
        }


@dataclass
class RestoreResult:
    """A photo after restoration. ``rgb`` is the 8-bit RGB result, ``native`` the same in the input
    file's own layout (gray, alpha, 16-bit; see ``LoadedImage.to_native``)."""

    image: LoadedImage
    rgb: np.ndarray
    native: np.ndarray
    faces: list[FaceResult] = field(default_factory=list)
    note: str = ""  # why no face was used, when ``faces`` is empty
    timings: dict[str, float] = field(default_factory=dict)  # detect / align / model / paste seconds

    @property
    def restored_faces(self) -> list[FaceResult]:
        return [f for f in self.faces if f.status == "restored"]

    @property
    def changed(self) -> bool:
        return bool(self.restored_faces)

    @property
    def seconds(self) -> float:
        return float(sum(self.timings.values()))


class Restorer:
    """Restore masked faces in photos with a MEER model.

    Args:
        model: a MEER model (``meer.models.checkpoint.load_meer``); put in eval mode and moved to ``device``.
        detector: a ``FaceDetector``; may be ``None`` only with ``aligned=True``.
        device: where the model runs.
        dtype: ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` for mixed precision.
        batch_size: faces per model forward pass.
        faces: ``"all"`` faces of a photo, only the ``"largest"``, or only the ``"center"`` one (box centre closest
            to the photo's centre: GFPGAN / CodeFormer's ``--only_center_face``); faces below ``min_face`` are
            dropped first.
        aligned: inputs are already aligned ArcFace crops (resized to 112 x 112 if needed); no detection.
        min_occlusion: faces with a smaller predicted occluded fraction are passed through unchanged.
        min_face: faces whose box is smaller than this many pixels (shorter side) are ignored.
        detect_size: photos whose longer side exceeds this are shrunk to it for detection only (MTCNN's
            cost grows with the pixel count); faces are still aligned from the full photo. ``None``/0: never.
        dilate, feather: growth and softness of the paste region around the pixels the model replaced, in
            crop pixels (see ``meer.inference.region``).
    """

    def __init__(self, model: torch.nn.Module, detector=None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, *, batch_size: int = 8,
                 faces: Literal["all", "largest", "center"] = "all", aligned: bool = False, min_occlusion: float = 0.05,
                 min_face: int = 20, detect_size: int | None = 1280, dilate: int = 0, feather: int = 2):
        if batch_size < 1:
            raise MeerError(f"--batch-size must be >= 1, got {batch_size}")
        if faces not in ("all", "largest", "center"):
            raise MeerError(f"faces must be 'all', 'largest' or 'center', got {faces!r}")
        if not 0.0 <= min_occlusion <= 1.0:
            raise MeerError(f"--min-occlusion must be a fraction in [0, 1], got {min_occlusion}")
        if detector is None and not aligned:
            raise MeerError("a face detector is needed unless the inputs are aligned crops (--aligned)")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device).eval()
        self.detector = detector
        self.batch_size = int(batch_size)
        self.faces = faces
        self.aligned = aligned
        self.min_occlusion = float(min_occlusion)
        self.min_face = int(min_face)
        if detect_size is not None and detect_size < 0:
            raise MeerError(f"--detect-size must be >= 0 (0: full resolution), got {detect_size}")
        self.detect_size = int(detect_size) if detect_size else None
        self.dilate = int(dilate)
        self.feather = int(feather)
        cfg = getattr(model, "cfg", None)
        self.crop_size = int(getattr(cfg, "image_size", CROP_SIZE))
        self.threshold = float(getattr(cfg, "infer_threshold", 0.5))

    # ------------------------------------------------------------------ public API
    def restore_image(self, image: LoadedImage) -> RestoreResult:
        """Restore one photo (see ``restore_images``)."""
        return self.restore_images([image])[0]

    def restore_images(self, images: Sequence[LoadedImage]) -> list[RestoreResult]:
        """Restore a batch of photos. A photo without a usable face comes back unchanged with an empty
        ``faces`` list and a ``note`` saying why."""
        images = list(images)
        if not images:
            return []
        timings = [{"detect": 0.0, "align": 0.0, "model": 0.0, "paste": 0.0} for _ in images]
        # 1. find the faces
        t0 = time.perf_counter()
        if self.aligned:
            found = [[self._whole_image_face(im)] for im in images]
            notes = ["" for _ in images]
        else:
            small, scales = zip(*(self._detection_input(im.rgb) for im in images))
            dets = self.detector.detect(list(small))
            found, notes = (zip(*(self._select(d, s, im.size) for d, s, im in zip(dets, scales, images)))
                            if dets else ((), ()))
            found, notes = list(found), list(notes)
        share = (time.perf_counter() - t0) / len(images)
        for t in timings:
            t["detect"] = share
        # 2. align
        jobs: list[tuple[int, dict]] = []  # (photo index, face record)
        for i, (im, faces) in enumerate(zip(images, found)):
            rgb = np.require(im.rgb, requirements="W") if faces else im.rgb  # torch warns on read-only arrays
            for face in faces:
                t0 = time.perf_counter()
                face.update(self._align(rgb, face))
                face["seconds"] = time.perf_counter() - t0
                timings[i]["align"] += face["seconds"]
                jobs.append((i, face))
        # 3. the model, on all crops of the batch
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            t0 = time.perf_counter()
            outs = self._run_model(np.stack([f["crop"] for _, f in chunk]))
            elapsed = time.perf_counter() - t0
            for k, (i, face) in enumerate(chunk):
                face.update({key: val[k] for key, val in outs.items()})
                face["seconds"] += elapsed / len(chunk)
                timings[i]["model"] += elapsed / len(chunk)
        # 4. paste back, photo by photo
        per_photo: list[list[dict]] = [[] for _ in images]
        for i, face in jobs:
            per_photo[i].append(face)
        return [self._compose(im, faces, note, t) for im, faces, note, t in zip(images, per_photo, notes, timings)]

    # ------------------------------------------------------------------ steps
    def _detection_input(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """The photo shrunk so that its longer side is at most ``detect_size`` (faces are found on it,
        then aligned from the full-resolution photo), and the factor applied."""
        h, w = rgb.shape[:2]
        if not self.detect_size or max(h, w) <= self.detect_size:
            return rgb, 1.0
        s = self.detect_size / max(h, w)
        size = (max(2, round(w * s)), max(2, round(h * s)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), s

    def _select(self, dets, scale: float = 1.0, size: tuple[int, int] | None = None) -> tuple[list[dict], str]:
        """The faces to restore among ``dets`` (found on the photo shrunk by ``scale``; ``size`` = the photo's
        (width, height)), largest first, or why there are none."""
        if not dets:
            return [], "no face found"
        faces = [{"box": np.asarray(d.box, np.float32) / scale, "score": float(d.score),
                  "landmarks": np.asarray(d.landmarks, np.float32) / scale} for d in dets]
        usable = [f for f in faces if min(f["box"][2] - f["box"][0], f["box"][3] - f["box"][1]) >= self.min_face]
        if not usable:
            return [], f"{len(dets)} face(s) found, all smaller than {self.min_face} px (see --min-face)"
        usable.sort(key=lambda f: -float((f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])))
        if self.faces == "largest":
            usable = usable[:1]
        elif self.faces == "center" and size is not None:
            cx, cy = size[0] / 2.0, size[1] / 2.0
            usable = [min(usable, key=lambda f: float(np.hypot((f["box"][0] + f["box"][2]) / 2 - cx,
                                                               (f["box"][1] + f["box"][3]) / 2 - cy)))]
        return usable, ""

    def _whole_image_face(self, im: LoadedImage) -> dict:
        w, h = im.size
        sx, sy = self.crop_size / w, self.crop_size / h
        landmarks = template_for_size(self.crop_size) / np.array([sx, sy], np.float32)
        return {"box": np.array([0, 0, w, h], np.float32), "score": None, "landmarks": landmarks,
                "matrix": np.array([[sx, 0, 0], [0, sy, 0]], np.float64)}

    def _align(self, rgb: np.ndarray, face: dict) -> dict:
        if "matrix" in face:  # an aligned input: resize to 112 if needed
            if rgb.shape[:2] == (self.crop_size, self.crop_size):
                crop = rgb.copy()
            else:
                t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
                crop = F.interpolate(t, size=(self.crop_size, self.crop_size), mode="bilinear", antialias=True,
                                     align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255)
                crop = crop.to(torch.uint8).numpy()
            return {"crop": crop}
        aligned = align_face(rgb, face["landmarks"], size=self.crop_size)
        return {"crop": np.ascontiguousarray(aligned.crop), "matrix": np.asarray(aligned.matrix, np.float64)}

    def _restores(self, occlusion):
        """Whether a face with this predicted occluded fraction is restored (else passed through unchanged); a
        float gives a bool, a tensor of fractions a bool tensor."""
        return (occlusion >= self.min_occlusion) & (occlusion > 0)

    @torch.inference_mode()
    def _run_model(self, crops: np.ndarray) -> dict[str, list]:
        x = images_to_tensor(crops, self.device)

        def occluded_share(occ_map: torch.Tensor) -> torch.Tensor:  # of what the model may restore (infer_top)
            return (self.model.restorable(occ_map.float()) > self.threshold).float().mean(dim=(1, 2, 3))

        # the generator runs only for the faces that will be restored: a face passed through costs the recognizer
        with autocast(self.device, self.dtype):
            out = self.model.restore_selected(x, lambda occ_map: self._restores(occluded_share(occ_map)))
            restored = out.restored.float().clamp(0.0, 1.0)
        occ = out.occ_map.float().clamp(0.0, 1.0)
        occlusion = occluded_share(occ).cpu().tolist()
        # the identity cosine masked vs restored is reported for restored faces only: faces passed through are not
        # embedded a second time (a whole encoder pass each)
        cos: list[float | None] = [None] * len(crops)
        keep = [i for i, frac in enumerate(occlusion) if self._restores(frac)]
        if keep:
            idx = torch.tensor(keep, device=restored.device)
            with autocast(self.device, self.dtype):
                emb_restored = self.model.embed(restored[idx])
            sims = F.cosine_similarity(out.embedding[idx].float(), emb_restored.float(), dim=1).cpu().tolist()
            for i, c in zip(keep, sims):
                cos[i] = c
        # the pixels the model actually replaced (its binarised, dilated map), feathered inwards
        changed = getattr(out, "composite_mask", None)
        changed = (occ > self.threshold).float() if changed is None else changed.float()
        region = paste_region(changed, dilate=self.dilate, feather=self.feather)
        restored_u8 = restored.mul(255.0).round().clamp(0, 255).to(torch.uint8)
        restored_u8 = torch.where((region > 0).expand_as(restored_u8), restored_u8, x.mul(255.0).round().to(torch.uint8))
        return {
            "restored": list(restored_u8.permute(0, 2, 3, 1).cpu().numpy()),
            "occ_map": list(occ[:, 0].cpu().numpy()),
            "region": list(region[:, 0].cpu().numpy()),
            "occlusion": occlusion,
            "id_cosine": cos,
        }

    def _compose(self, im: LoadedImage, faces: list[dict], note: str, timings: dict) -> RestoreResult:
        t0 = time.perf_counter()
        results = []
        for idx, f in enumerate(faces):
            restore = self._restores(f["occlusion"])
            results.append(FaceResult(
                index=idx, box=f["box"], score=f["score"], landmarks=f["landmarks"], matrix=f["matrix"],
                crop=f["crop"], restored=f["restored"] if restore else f["crop"], occ_map=f["occ_map"],
                region=f["region"] if restore else np.zeros_like(f["region"]), occlusion=f["occlusion"],
                id_cosine=f["id_cosine"] if restore else None, status="restored" if restore else "passthrough",
                seconds=f["seconds"]))
        pasted = [r for r in results if r.status == "restored"]
        rgb = im.rgb
        for r in pasted:  # 8-bit RGB view, faces pasted in order
            rgb = paste_back(rgb, r.restored, r.matrix, region=r.region)
        plain = im.bit_depth == 8 and im.channels == 3 and im.alpha is None
        if not pasted:
            native = im.to_native(im.rgb, im.rgb16)
        elif plain:
            native = rgb
        else:  # alpha, gray or 16-bit: blend again in the file's own layout and depth
            native = paste_faces(im, [r.restored for r in pasted], [r.matrix for r in pasted],
                                 [r.region for r in pasted])
        elapsed = time.perf_counter() - t0
        timings["paste"] += elapsed
        for r in pasted:
            r.seconds += elapsed / len(pasted)
        if not faces and not note:
            note = "no face found"
        return RestoreResult(image=im, rgb=rgb, native=native, faces=results, note=note, timings=timings)
