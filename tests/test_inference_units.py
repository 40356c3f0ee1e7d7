"""Inference building blocks: paste region, comparison strips, device/precision choice, summary files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from meer.inference.region import EPS, paste_region
from meer.inference.runtime import autocast, resolve_device, resolve_dtype
from meer.inference.summary import CSV_COLUMNS, PhotoRecord, csv_text, totals, write_summary
from meer.inference.visuals import comparison_strip, occlusion_image, overlay
from meer.utils.errors import MeerError


def _lower_half_map(b=2, size=112):
    occ = torch.zeros(b, 1, size, size)
    occ[:, :, 70:100, 30:82] = 0.9
    return occ


def test_region_covers_occlusion_and_stays_inside_what_was_replaced():
    occ = _lower_half_map()
    region = paste_region(occ, dilate=3, feather=2, border=4)
    assert region.shape == occ.shape
    assert region.min() >= 0 and region.max() <= 1
    # every occluded pixel is fully restored
    assert torch.all(region[occ > 0.5] == 1.0)
    # outside the map grown by `dilate` the region is exactly 0: the feather never spreads outwards
    grown = paste_region(occ, dilate=3, feather=0, border=0) > 0
    assert torch.all(region[~grown] == 0.0)
    assert region[0, 0, 66, 56] == 0.0 and region[0, 0, 63, 56] == 0.0
    # an inward linear ramp: rows 67, 68 are the outer rings of the grown map (rows 67..102)
    assert region[0, 0, 67, 56] == pytest.approx(1 / 3) and region[0, 0, 68, 56] == pytest.approx(2 / 3)
    assert region[0, 0, 69, 56] == 1.0
    # no tiny non-zero weights that would change a pixel by rounding
    nz = region[region > 0]
    assert torch.all(nz >= EPS)


def test_default_region_is_the_replaced_pixels_only():
    occ = _lower_half_map(b=1)
    region = paste_region(occ)
    assert torch.equal(region > 0, occ > 0.5)  # nothing beyond what the model replaced
    assert torch.all(region[0, 0, 72:98, 32:80] == 1.0)


def test_region_is_zero_on_the_crop_border_and_threshold_matters():
    occ = torch.ones(1, 1, 112, 112)
    region = paste_region(occ, border=4)
    assert torch.all(region[..., 0, :] == 0) and torch.all(region[..., :, -1] == 0)
    assert torch.all(region[..., 4:-4, 4:-4] == 1)
    assert torch.count_nonzero(paste_region(torch.full((1, 1, 112, 112), 0.4))) == 0
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        paste_region(torch.zeros(1, 3, 8, 8))


def test_region_batched_is_per_sample():
    occ = _lower_half_map(b=3)
    occ[1] = 0
    region = paste_region(occ)
    assert torch.count_nonzero(region[1]) == 0
    assert torch.equal(region[0], region[2])


def test_visuals():
    crop = np.full((112, 112, 3), 100, np.uint8)
    occ = np.zeros((112, 112), np.float32)
    occ[60:, :] = 1.0
    img = occlusion_image(occ)
    assert img.dtype == np.uint8 and img[0, 0] == 0 and img[-1, -1] == 255
    ov = overlay(crop, occ)
    assert np.array_equal(ov[:60], crop[:60]) and not np.array_equal(ov[60:], crop[60:])
    strip = comparison_strip(crop, occ, crop, gap=2)
    assert strip.shape == (112, 3 * 112 + 4, 3)
    assert np.all(strip[:, 112:114] == 255)
    with pytest.raises(ValueError):
        comparison_strip(crop, occ[:50], crop)


def test_device_and_precision_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(MeerError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(MeerError, match="--device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MeerError, match="CUDA is not available"):
            resolve_device("cuda")
    lin = torch.nn.Linear(4, 4)
    with torch.no_grad(), autocast(torch.device("cpu"), torch.bfloat16):
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with torch.no_grad(), autocast(torch.device("cpu"), torch.float32):
        assert lin(torch.ones(1, 4)).dtype == torch.float32


def _records():
    face = {"face": 0, "status": "restored", "box": [1.0, 2.0, 30.0, 40.0], "score": 0.99, "occlusion": 0.31,
            "id_cosine": 0.8, "seconds": 0.1}
    pas = dict(face, face=1, status="passthrough", id_cosine=None, occlusion=0.01)
    return [PhotoRecord("a/x.jpg", "ok", width=64, height=48, faces=[face, pas], seconds=0.5,
                        output="restored_imgs/a/x.jpg"),
            PhotoRecord("cat.jpg", "no_face", "no face found", width=10, height=10),
            PhotoRecord("notes.txt", "unreadable", "not an image file (extension .txt)")]


def test_summary_csv_and_json(tmp_path):
    recs = _records()
    rows = list(csv.DictReader(csv_text(recs).splitlines()))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 4  # two faces + two photos without faces
    assert [r["face_status"] for r in rows[:2]] == ["restored", "passthrough"]
    assert rows[1]["id_cosine"] == "" and rows[0]["id_cosine"] == "0.8"
    assert rows[2]["status"] == "no_face" and rows[2]["face"] == ""
    assert rows[3]["reason"].startswith("not an image")
    t = totals(recs)
    assert t == {"photos": 3, "photos_ok": 1, "photos_skipped": 2, "photos_no_face": 1, "photos_too_small": 0,
                 "photos_unreadable": 1, "photos_error": 0, "faces": 2, "faces_restored": 1, "faces_passthrough": 1}
    write_summary(tmp_path, recs, {"device": "cpu"})
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["run"]["device"] == "cpu" and doc["run"]["totals"] == t
    assert doc["photos"][0]["faces"][1]["status"] == "passthrough"
    assert (tmp_path / "summary.csv").read_text() == csv_text(recs)
    with pytest.raises(ValueError, match="unknown photo status"):
        PhotoRecord("x", "fine")
