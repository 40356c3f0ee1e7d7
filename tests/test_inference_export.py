"""`meer-export`: ONNX and TorchScript files of a small randomly initialised MEER (IR and dlib encoders) run with
onnxruntime / torch.jit and match PyTorch to 1e-3, with a free batch size."""
import json

import numpy as np
import pytest
import torch

from meer.inference.export import export_model, onnx_available
from meer.models.checkpoint import save_inference_checkpoint
from meer.models.meer import MEER, MEERConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # a second thread only loses on a busy 2-core machine
needs_onnx = pytest.mark.skipif(not onnx_available(), reason="onnx / onnxscript not installed (the export extra)")


def tiny(encoder="ir"):
    torch.manual_seed(0)
    cfg = MEERConfig(encoder=encoder, image_size=32, enc_width=8, enc_layers=(1, 1), split_channels=8,
                     occ_head_width=8, id_dim=256 if encoder == "dlib" else 16, occ_dim=8, embedding_dim=32,
                     gen_width=8, gen_max_width=32, infer_dilate=1)
    m = MEER(cfg)
    m.train()
    with torch.no_grad():
        m(torch.rand(4, 3, 32, 32))  # BN running statistics away from their defaults
    return m.eval()


def reference(m, x):
    with torch.no_grad():
        restored, occ = m.restore(x)
        return {"restored": restored.numpy(), "occlusion": occ.numpy(), "embedding": m.embed(x).numpy()}


def run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"image": x.numpy()})))


def check(got, ref, names):
    for n in names:
        assert got[n].shape == ref[n].shape, n
        np.testing.assert_allclose(got[n], ref[n], atol=1e-3, rtol=0, err_msg=n)


@needs_onnx
@pytest.mark.parametrize("graph", ["restorer", "embedder"])
def test_onnx_of_the_ir_model_matches_pytorch(tmp_path, graph):
    m = tiny("ir")
    res = export_model(m, tmp_path, ("onnx",), graphs=(graph,))
    x = torch.rand(3, 3, 32, 32)  # another batch size than the export's example
    outputs = ["restored", "occlusion"] if graph == "restorer" else ["embedding"]
    check(run_onnx(res.files[f"{graph}.onnx"], x), reference(m, x), outputs)
    assert not list(tmp_path.glob("*.data"))  # one self-contained file per graph


@needs_onnx
@pytest.mark.slow  # torch.export of dlib's 29-conv trunk alone takes ~10 s on a loaded 2-core CPU
def test_onnx_of_the_dlib_encoder_model_matches_pytorch(tmp_path):
    m = tiny("dlib")
    res = export_model(m, tmp_path, ("onnx",), graphs=("restorer",))  # GridSample (opset >= 16) in the encoder
    x = torch.rand(2, 3, 32, 32)
    check(run_onnx(res.files["restorer.onnx"], x), reference(m, x), ["restored", "occlusion"])


@pytest.mark.parametrize("encoder", ["ir", "dlib"])
def test_torchscript_files_match_pytorch(tmp_path, encoder):
    m = tiny(encoder)
    if encoder == "dlib":  # the shipped model's inference settings: nothing restored above the eyes, low-pass template
        m.cfg.infer_top, m.cfg.gen_template_lowpass, m.cfg.gen_template = 0.42, True, True
        m.cfg.gen_template_lowpass_taps = 9
        m.generator = type(m.generator)(m.encoder.channels, m.encoder.feature_sizes(32)[-1], 256, 8, 32,
                                        template=True, image_size=32, template_lowpass=True,
                                        template_lowpass_taps=9).eval()
    res = export_model(m, tmp_path, ("torchscript",))
    x = torch.rand(3, 3, 32, 32)
    ref = reference(m, x)
    restored, occ = torch.jit.load(str(res.files["restorer.ts"]))(x)
    emb = torch.jit.load(str(res.files["embedder.ts"]))(x)
    check({"restored": restored.detach().numpy(), "occlusion": occ.detach().numpy(),
           "embedding": emb.detach().numpy()}, ref, ["restored", "occlusion", "embedding"])
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["input"]["shape"] == ["batch", 3, 32, 32] and info["config"]["encoder"] == encoder


def test_cli_exports_a_checkpoint_and_refuses_to_overwrite(tmp_path, capsys):
    from meer.cli.export import main

    ckpt = save_inference_checkpoint(tiny("ir"), tmp_path / "tiny.pt", {"step": 7})
    out = tmp_path / "export"
    assert main([str(ckpt), str(out), "--format", "torchscript"]) == 0
    assert "wrote embedder.ts, export.json, restorer.ts" in capsys.readouterr().out
    assert json.loads((out / "export.json").read_text())["meta"]["step"] == 7
    assert main([str(ckpt), str(out), "--format", "torchscript"]) == 2
    assert "already exists (use --overwrite" in capsys.readouterr().err
    assert main([str(ckpt), str(out), "--format", "torchscript", "--overwrite"]) == 0
    assert main([str(tmp_path / "nope.pt"), str(out)]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
