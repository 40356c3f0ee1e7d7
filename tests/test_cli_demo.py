"""`make demo`: without a checkpoint, detection, alignment overlay, masked photo and its exact GT mask; with one,
the masked photo restored by meer-restore."""
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


def test_demo_with_a_checkpoint_restores_and_prints_the_compare_image(tmp_path, monkeypatch, capsys):
    import torch
    from meer.models.checkpoint import save_inference_checkpoint
    from meer.models.meer import MEER, MEERConfig

    torch.manual_seed(0)
    cfg = MEERConfig(image_size=112, enc_width=4, enc_layers=(1, 1, 1), enc_stem_stride=2, split_channels=8,
                     occ_head_width=4, id_dim=16, occ_dim=8, embedding_dim=16, gen_width=4, gen_max_width=16,
                     gen_template=True)
    model = MEER(cfg).eval()
    ckpt = save_inference_checkpoint(model, tmp_path / "tiny.pt", {"note": "random tiny test model"})
    monkeypatch.setenv("MEER_CHECKPOINT", str(ckpt))
    assert demo.main(["--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    cmp = sorted((tmp_path / "out" / "restored" / "cmp").glob("*.png"))
    assert len(cmp) == 1 and f"compare image (masked crop | predicted occlusion | restored crop): {cmp[0]}" in printed
    assert (tmp_path / "out" / "restored" / "restored_imgs" / "masked.png").is_file()
    assert (tmp_path / "out" / "masked_input" / "masked.png").is_file()
