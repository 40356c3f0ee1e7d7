"""restore_folder on aligned crops (no detector, fast): failures are isolated, layouts kept, names unique."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meer.inference.folder import check_output, face_keys, restore_folder
from meer.inference.pipeline import Restorer
from meer.models.meer import MEER, MEERConfig
from meer.utils.errors import MeerError, OutputExistsError

TINY = dict(enc_width=8, enc_layers=(1, 1, 1, 1), enc_max_width=32, enc_stem_stride=2, split_channels=8,
            occ_head_width=8, id_dim=16, occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32)


def restorer(**kw) -> Restorer:
    torch.manual_seed(0)
    model = MEER(MEERConfig(**TINY)).eval()
    logits = torch.full((1, 1, 112, 112), -20.0)
    logits[..., 66:104, 28:84] = 20.0
    model.decoupling.occ_head.register_forward_hook(lambda mod, inp, out: logits.to(out).expand_as(out))
    return Restorer(model, None, aligned=True, **kw)


@pytest.fixture
def crops(tmp_path, astronaut_path) -> Path:
    root = tmp_path / "crops"
    root.mkdir()
    face = Image.open(astronaut_path).convert("RGB").crop((150, 40, 300, 190)).resize((112, 112))
    face.save(root / "face.png")
    face.convert("L").save(root / "gray.png")
    Image.new("RGB", (112, 112), (255, 255, 255)).save(root / "white.png")
    return root


def test_a_failing_photo_is_an_error_row_and_the_run_goes_on(crops, tmp_path, monkeypatch):
    r = restorer(batch_size=4)
    real = Restorer._run_model

    def flaky(self, batch):
        if (batch == 255).all(axis=(1, 2, 3)).any():
            raise RuntimeError("boom on a white crop")
        return real(self, batch)

    monkeypatch.setattr(Restorer, "_run_model", flaky)
    run = restore_folder(crops, tmp_path / "out", r, progress=False)
    status = {rec.path: (rec.status, rec.reason) for rec in run.records}
    assert status == {"face.png": ("ok", ""), "gray.png": ("ok", ""),
                      "white.png": ("error", "RuntimeError: boom on a white crop")}
    assert run.exit_code() == 0
    assert run.totals["faces_restored"] == 2
    gray = Image.open(tmp_path / "out" / "restored_imgs" / "gray.png")
    assert gray.mode == "L" and gray.size == (112, 112)
    src = np.asarray(Image.open(crops / "gray.png"))
    out = np.asarray(gray)
    assert (src != out)[66:104, 28:84].mean() > 0.9 and not (src != out)[:50].any()
    assert not (tmp_path / "out" / "restored_imgs" / "white.png").exists()
    assert set(run.timings) == {"read", "detect", "align", "model", "paste", "write"}


def test_output_checks(crops, tmp_path):
    with pytest.raises(MeerError, match="inside the input folder"):
        check_output(crops, crops / "sub")
    # a single photo may have its results next to it, but not replace it
    assert check_output(crops / "face.png", crops / "x") == (crops / "x").resolve()
    with pytest.raises(MeerError, match="not the input photo itself"):
        check_output(crops / "face.png", crops / "face.png")
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "summary.csv").write_text("")
    with pytest.raises(OutputExistsError, match=r"already holds results \(masks/, summary.csv\)"):
        check_output(crops, out)
    assert check_output(crops, out, overwrite=True) == out.resolve()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="not a folder"):
        check_output(crops, tmp_path / "file")


def test_single_file_input_and_unique_crop_names(crops, tmp_path):
    run = restore_folder(crops / "face.png", crops / "out", restorer(), progress=False)
    assert [r.path for r in run.records] == ["face.png"] and run.records[0].output == "restored_imgs/face.png"
    assert (crops / "out" / "cmp" / "face_00.png").is_file()
    keys = face_keys([Path("a/x.jpg"), Path("a/x.png"), Path("b/x.jpg"), Path("a/y.JPG")])
    assert keys == {Path("a/x.jpg"): "x_jpg", Path("a/x.png"): "x_png", Path("b/x.jpg"): "x", Path("a/y.JPG"): "y"}


def test_interrupted_run_still_writes_a_summary(crops, tmp_path, monkeypatch):
    original = Restorer.restore_images
    calls = []

    def interrupt_second_batch(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(Restorer, "restore_images", interrupt_second_batch)
    with pytest.raises(KeyboardInterrupt):
        restore_folder(crops, tmp_path / "out", restorer(batch_size=1), progress=False)
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["run"]["complete"] is False
    assert [p["path"] for p in doc["photos"]] == ["face.png"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("summary.")}


def test_threaded_io_writes_the_same_files_as_one_thread(crops, tmp_path):
    """Decoding ahead and writing behind in threads changes nothing in what is written, nor the summary's rows."""
    (crops / "sub").mkdir()
    for i in range(5):  # more photos than a batch, some passed through (white), one unreadable, one not an image
        Image.open(crops / "face.png").rotate(3 * i).save(crops / "sub" / f"r{i}.jpg", quality=90)
    (crops / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (crops / "notes.txt").write_text("x")
    for min_occ in (0.05, 0.5):  # every face restored / every face passed through (photos copied byte for byte)
        runs = {}
        for threads in (0, 2):
            runs[threads] = restore_folder(crops, tmp_path / f"out{threads}_{min_occ}",
                                           restorer(batch_size=3, min_occlusion=min_occ), progress=False,
                                           io_threads=threads)
        one, two = tmp_path / f"out0_{min_occ}", tmp_path / f"out2_{min_occ}"
        assert _files(one) == _files(two) and len(_files(one)) == 8 + 4 * 8
        rows = {t: [(r.path, r.status, r.reason, r.output, [{k: v for k, v in f.items() if k != "seconds"}
                                                           for f in r.faces]) for r in run.records]
                for t, run in runs.items()}
        assert rows[0] == rows[2]
        assert [r[1] for r in rows[0]].count("unreadable") == 2
        assert runs[2].totals["faces_restored"] == (8 if min_occ < 0.5 else 0)
    for name in ("face.png", "gray.png", "sub/r1.jpg"):
        assert (two / "restored_imgs" / name).read_bytes() == (crops / name).read_bytes()
