"""Inference checkpoints: fp16 round trip with weights_only=True, atomic write, one-line errors."""
from __future__ import annotations

import pytest
import torch

from meer.models.checkpoint import CheckpointError, load_meer, save_inference_checkpoint
from meer.models.meer import MEER, MEERConfig
from meer.utils.errors import MeerError


def _model():
    torch.manual_seed(0)
    cfg = MEERConfig(image_size=32, enc_width=8, enc_layers=(1, 1), split_channels=8, occ_head_width=8, id_dim=16,
                     occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32, infer_dilate=1)
    m = MEER(cfg)
    m.train()
    m(torch.rand(4, 3, 32, 32))  # move BN running statistics away from their defaults
    return m.eval()


def test_round_trip_fp16_weights_only(tmp_path):
    m = _model()
    path = save_inference_checkpoint(m, tmp_path / "model.pt", {"step": 12, "lpips_is_real": False, "note": "x"})
    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert raw["format"] == "meer-inference"
    assert all(v.dtype in (torch.float16, torch.int64) for v in raw["state_dict"].values())
    loaded, meta = load_meer(path)
    assert meta == {"step": 12, "lpips_is_real": False, "note": "x"}
    assert loaded.cfg == m.cfg and not loaded.training
    for k, v in m.state_dict().items():
        expected = v.half().float() if v.is_floating_point() else v
        assert torch.equal(loaded.state_dict()[k], expected), k
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), m.embed(x), atol=2e-2, rtol=0)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_a_checkpoint_from_before_a_config_key_loads_with_its_old_default(tmp_path):
    """Checkpoints written before ``gen_template_lowpass_taps`` existed were trained with the 5-tap read-out."""
    path = save_inference_checkpoint(_model(), tmp_path / "old.pt", {"step": 1})
    raw = torch.load(path, weights_only=True)
    raw["config"].pop("gen_template_lowpass_taps")
    torch.save(raw, path)
    loaded, _ = load_meer(path)
    assert loaded.cfg.gen_template_lowpass_taps == 5 and loaded.generator.lowpass.shape[-1] == 5


def test_ddp_like_wrapper_is_unwrapped(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_inference_checkpoint(Wrapper(_model()), tmp_path / "w.pt")
    assert isinstance(load_meer(tmp_path / "w.pt")[0], MEER)


def test_missing_corrupt_and_incompatible_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_meer(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MeerError, match="not a readable meer checkpoint"):
        load_meer(bad)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a meer inference checkpoint"):
        load_meer(other)
    path = save_inference_checkpoint(_model(), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"]["id_dim"] = 24
    torch.save(raw, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape"):
        load_meer(tmp_path / "shape.pt")
    raw["config"]["id_dim"] = 16
    raw["config"]["no_such_option"] = 1
    torch.save(raw, tmp_path / "cfg.pt")
    with pytest.raises(CheckpointError, match="no_such_option"):
        load_meer(tmp_path / "cfg.pt")
    for err in (CheckpointError,):
        assert issubclass(err, MeerError)


def test_meta_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match="plain values"):
        save_inference_checkpoint(_model(), tmp_path / "m.pt", {"cfg": object()})
