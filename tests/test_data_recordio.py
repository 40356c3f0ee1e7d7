"""insightface RecordIO training sets (train.rec + train.idx + property) read without mxnet; the binary format
is written here byte by byte (dmlc RecordIO framing, mxnet's IRHeader 'IfQQ') to check the reader against it."""
import struct

import cv2
import numpy as np
import pytest

from meer.data import recordio
from meer.data.identity_folders import IdentityFolderDataset
from meer.data.recordio import MAGIC, RecordIOSet, frame, pack_record, unpack_record
from meer.utils.errors import MeerError

pytestmark = pytest.mark.usefixtures("one_thread")


def face(ident, shot, size=112):
    base = np.random.default_rng(ident).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += np.random.default_rng(100 * ident + shot).integers(-6, 7, img.shape).astype(np.int16)
    return img.clip(0, 255).astype(np.uint8)


def png(img):
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


def header(flag, label, id1=0, id2=0):
    return struct.pack("<IfQQ", flag, label, id1, id2)


def record(payload, flag=0):
    return struct.pack("<II", MAGIC, (flag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def build_rec(folder, ids=4, per=3, insightface_header=True, split_record_key=None):
    """insightface layout: record 0 = (first identity record, end), images 1..N, then one record per identity."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs, offsets, data = {}, {}, bytearray()
    n_img = ids * per
    if insightface_header:
        blobs[0] = [header(2, 0.0) + struct.pack("<ff", n_img + 1, n_img + 1 + ids)]
    key = 1
    for i in range(ids):
        for j in range(per):
            payload = header(0, float(i), key) + png(face(i, j))
            if key == split_record_key:  # a payload holding the magic number at a 4-byte boundary: written in parts
                payload = header(0, float(i), key) + b"ab" + b"cd" + struct.pack("<I", MAGIC) + png(face(i, j))
                cut = 28  # 24-byte header + 4 bytes, then the magic number
                blobs[key] = [record(payload[:cut], 1), record(payload[cut + 4:], 3)]
            else:
                blobs[key] = [record(payload)]
            key += 1
    if insightface_header:
        for i in range(ids):
            blobs[key] = [record(header(2, 0.0) + struct.pack("<ff", 1 + i * per, 1 + (i + 1) * per))]
            key += 1
        blobs[0] = [record(blobs[0][0])]
    for k in sorted(blobs):
        offsets[k] = len(data)
        for part in blobs[k]:
            data += part
    (folder / "train.rec").write_bytes(bytes(data))
    (folder / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    (folder / "property").write_text(f"{ids},112,112")
    return folder / "train.rec"


@pytest.fixture(autouse=True)
def fresh_cache():
    recordio._OPEN.clear()
    yield
    recordio._OPEN.clear()


@pytest.mark.parametrize("insightface_header", [True, False])
def test_reads_identities_and_images(tmp_path, insightface_header):
    rec = build_rec(tmp_path / "faces_webface_112x112", insightface_header=insightface_header, split_record_key=5)
    s = RecordIOSet.open(rec)
    assert s.num_classes == 4 and s.image_size == (112, 112) and not s.problems
    assert {k: len(v) for k, v in s.identities.items()} == {0: 3, 1: 3, 2: 3, 3: 3}
    assert np.array_equal(s.image(s.identities[2][1]), face(2, 1))
    h, rest = unpack_record(s.read(5))  # the split record comes back whole, magic number included
    assert h.label == 1.0 and rest[:8] == b"abcd" + struct.pack("<I", MAGIC)


def test_frame_and_pack_round_trip_through_the_reader(tmp_path):
    payload = pack_record((3.0, 7.0)) + struct.pack("<I", MAGIC) + b"xyz"
    assert frame(payload)[:8] == struct.pack("<II", MAGIC, (1 << 29) | 32)  # split at the magic number
    recordio.write_recordio(tmp_path / "t", {0: payload, 1: pack_record(2.0, b"img")})
    s = RecordIOSet.__new__(RecordIOSet)
    s.rec, s.offsets = tmp_path / "t.rec", {0: 0, 1: len(frame(payload))}
    assert s.read(0) == payload
    h, img = unpack_record(s.read(1))
    assert (h.flag, h.label, img) == (0, 2.0, b"img")


def test_identity_dataset_on_a_rec_root(tmp_path):
    rec = build_rec(tmp_path / "faces_webface_112x112")
    ds = IdentityFolderDataset([str(rec)], split="all", image_size=56)
    assert ds.num_classes == 4 and len(ds) == 12 and ds.identities == ["0", "1", "2", "3"]
    item = ds[4]
    assert item["clean"].shape == (3, 56, 56) and item["identity"] == 1 and item["path"].endswith("train.rec#5")
    two = IdentityFolderDataset([str(rec), str(build_rec(tmp_path / "other"))], split="train",
                                eval_identities=["faces_webface_112x112/3"])
    assert "faces_webface_112x112/3" not in two.identities and "other/3" in two.identities and two.num_classes == 7


@pytest.mark.parametrize("insightface_header", [False, True])
def test_truncated_rec_leaves_out_what_is_missing_with_one_line_each(tmp_path, capsys, insightface_header):
    rec = build_rec(tmp_path / "ms1m", insightface_header=insightface_header)
    s = RecordIOSet.open(rec)
    last = max(s.offsets)
    rec.write_bytes(rec.read_bytes()[: s.offsets[last] + 20])  # the last record breaks off
    recordio._OPEN.clear()
    ds = IdentityFolderDataset(str(rec), split="all")
    err = capsys.readouterr().err
    assert f"{rec}: record {last} is cut off after 12 of" in err
    if insightface_header:  # the last record is an identity record: that identity goes, its images stay unlabelled
        assert f"identity record {last} is missing; identity 3 left out" in err
        assert len(ds) == 9
        return
    assert len(ds) == 11  # the rest is there
    rec.write_bytes(rec.read_bytes()[: s.offsets[3] + 4])
    recordio._OPEN.clear()
    IdentityFolderDataset(str(rec), split="all")
    assert "record 4 (offset" in capsys.readouterr().err
    (tmp_path / "ms1m" / "train.idx").unlink()
    with pytest.raises(MeerError, match=r"train.rec: its index train.idx is missing"):
        RecordIOSet.open(rec)


def test_meer_train_dry_run_on_a_rec(tmp_path, capsys):
    from pathlib import Path

    from meer.cli.train import main as train_main

    rec = build_rec(tmp_path / "faces_webface_112x112", ids=6)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    code = train_main(["--config", str(tiny), f"data.roots=[{rec}]", f"runs_dir={tmp_path / 'runs'}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "train: 12 images of 4 identities" in out and "2 held-out identities" in out
