"""The shipped checkpoint (``checkpoints/meer_112.pt``) on a synthetically masked photo; skipped until it exists.

What a trained model must do on the bundled face with a synthetic surgical mask (exact ground truth):
find the mask (IoU of its predicted occlusion with the true mask in the aligned crop), restore the
masked pixels closer to the unmasked photo than the mask itself is, and keep the identity of the
restored face close to the masked one. Thresholds are deliberately modest (a small CPU-trained model).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from meer.inference import weights

SHIPPED = weights.REPO_ROOT / "checkpoints" / weights.CHECKPOINT_NAME

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"no shipped checkpoint at {SHIPPED}")


def test_shipped_checkpoint_is_small_and_loads_with_weights_only():
    import torch

    assert SHIPPED.stat().st_size < 50 * 2**20
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    from meer.models.checkpoint import load_meer

    model, meta = load_meer(SHIPPED)
    assert meta["step"] > 0 and model.cfg.image_size == 112
    sd = state["state_dict"]
    assert any(k.startswith("generator.") for k in sd) and any(k.startswith("decoupling.") for k in sd)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())


def test_shipped_checkpoint_restores_a_synthetic_mask(astronaut_path):
    from meer.faces.detect import FaceDetector
    from meer.inference.loading import load_restorer
    from meer.masking.apply import apply_mask
    from meer.masking.spec import MaskSpec
    from meer.utils.images import decode_image, encode_image, read_image

    clean = read_image(astronaut_path)
    detector = FaceDetector("cpu", fallback=None)
    det = detector.detect([clean.rgb])[0][0]
    masked = apply_mask(clean.rgb, det.landmarks, MaskSpec(kind="surgical", coverage="over_nose", seed=3))
    photo = decode_image(encode_image(masked.image, ".png"))

    restorer, info = load_restorer(SHIPPED, device="cpu", precision="fp32", detector=detector)
    res = restorer.restore_image(photo)
    assert len(res.faces) == 1
    face = res.faces[0]
    assert face.status == "restored"

    truth = cv2.warpAffine(masked.mask.astype(np.float32), face.matrix, (112, 112), flags=cv2.INTER_LINEAR) > 0.5
    pred = face.occ_map > 0.5
    iou = (truth & pred).sum() / max(1, (truth | pred).sum())
    assert iou > 0.5, f"occlusion IoU {iou:.2f}"

    m = masked.mask
    err_masked = np.abs(photo.rgb[m].astype(float) - clean.rgb[m]).mean()
    err_restored = np.abs(res.rgb[m].astype(float) - clean.rgb[m]).mean()
    assert err_restored < 0.8 * err_masked, f"restored L1 {err_restored:.1f} vs masked {err_masked:.1f}"
    assert face.id_cosine > 0.3
    # unmasked pixels far from the mask are untouched
    far = cv2.dilate(m.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0
    assert np.array_equal(res.rgb[far], photo.rgb[far])
