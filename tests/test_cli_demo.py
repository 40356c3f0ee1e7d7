"""`make demo` without a checkpoint: detection, alignment overlay, masked photo and its exact GT mask."""
from __future__ import annotations

import numpy as np
from meer.cli import demo
from meer.utils.images import read_image


def test_demo_writes_masked_photo_mask_and_overlay(tmp_path, monkeypatch, capsys):
    from meer.inference import weights

    monkeypatch.setattr(weights, "candidate_paths", lambda explicit=None: [("test", tmp_path / "none.pt")])
    assert demo.main(["--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    original = read_image(demo.EXAMPLE).rgb
    masked = read_image(out / "masked.png").rgb
    mask = read_image(out / "occlusion_mask.png").rgb[..., 0] > 127
    assert 500 < mask.sum() < 0.2 * mask.size
    np.testing.assert_array_equal(masked[~mask], original[~mask])
    assert (masked[mask] != original[mask]).any(axis=-1).all()
    assert read_image(out / "aligned_112.png").rgb.shape == (112, 112, 3)
    assert read_image(out / "alignment_overlay.png").rgb.shape[:2] == original.shape[:2]
    assert "outputs are in" in capsys.readouterr().out


def test_demo_refuses_output_inside_examples(capsys):
    assert demo.main(["--out", str(demo.EXAMPLE.parent / "x")]) == 2
    assert "refusing to write inside the input folder" in capsys.readouterr().err
    assert not (demo.EXAMPLE.parent / "x").exists()
