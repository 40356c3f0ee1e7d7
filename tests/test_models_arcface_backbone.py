"""arcface_torch iresnet ``backbone.pth`` files (r18 / r34 / r50 / r100) load into meer's IR encoder.

The reference layout is written out here from insightface's ``recognition/arcface_torch/backbones/iresnet.py``
(key names and shapes of ``IResNet.state_dict()``), with a functional forward of that network to check that the
loaded encoder + head compute what arcface_torch computes."""
import pytest
import torch
import torch.nn.functional as F

from meer.models.arcface_backbone import (ARCHS, BackboneError, arcface_key, infer_arch, load_arcface_backbone,
                                          load_arcface_embedder)
from meer.models.meer import MEER, MEERConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PLANES = (64, 128, 256, 512)


def bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def iresnet_layout(layers, num_features=512, width=64):
    """``{key: shape}`` of arcface_torch's ``IResNet(IBasicBlock, layers)``."""
    shapes = {"conv1.weight": (width, 3, 3, 3), **bn_keys("bn1", width), "prelu.weight": (width,)}
    inplanes = width
    for i, (n, planes) in enumerate(zip(layers, PLANES), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            shapes.update(bn_keys(f"{p}.bn1", inplanes))
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            shapes.update(bn_keys(f"{p}.bn2", planes))
            shapes[f"{p}.prelu.weight"] = (planes,)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes.update(bn_keys(f"{p}.bn3", planes))
            if j == 0:  # stride 2 at the start of every stage: a downsample branch
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                shapes.update(bn_keys(f"{p}.downsample.1", planes))
            inplanes = planes
    shapes.update(bn_keys("bn2", 512))
    shapes["fc.weight"] = (num_features, 512 * 7 * 7)
    shapes["fc.bias"] = (num_features,)
    shapes.update(bn_keys("features", num_features))
    return shapes


def random_state(layers, seed=0, empty=False, **kw):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in iresnet_layout(layers, **kw).items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(100)
        elif empty:
            out[k] = torch.empty(shape)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(".weight") and len(shape) == 1 and "prelu" not in k:
            out[k] = torch.rand(shape, generator=g) * 0.5 + 0.75  # BN scales
        else:
            fan = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            out[k] = torch.randn(shape, generator=g) * (0.1 if len(shape) == 1 else (2.0 / fan) ** 0.5)
    return out


def reference_forward(s, x):
    """arcface_torch's IResNet.forward, functionally (eval mode), on x in [-1, 1]."""
    def bn(t, p):
        return F.batch_norm(t, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                            False, 0.0, 1e-5)

    x = F.prelu(bn(F.conv2d(x, s["conv1.weight"], padding=1), "bn1"), s["prelu.weight"])
    for i in range(1, 5):
        j = 0
        while f"layer{i}.{j}.conv1.weight" in s:
            p = f"layer{i}.{j}"
            stride = 2 if j == 0 else 1
            out = F.conv2d(bn(x, f"{p}.bn1"), s[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), s[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, s[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            idt = bn(F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1") \
                if f"{p}.downsample.0.weight" in s else x
            x = out + idt
            j += 1
    x = torch.flatten(bn(x, "bn2"), 1)
    return bn(F.linear(x, s["fc.weight"], s["fc.bias"]), "features")


def test_r18_embeddings_match_the_reference_network(tmp_path):
    state = random_state(ARCHS["r18"])
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as a DDP save writes it
    model = load_arcface_embedder(path, "r18", normalize=False)
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(state, x * 2 - 1), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("arch", ["r18", "r34", "r50", "r100"])
def test_every_arch_maps_key_for_key(arch):
    state = random_state(ARCHS[arch], empty=arch in ("r50", "r100"))
    assert infer_arch(state) == ARCHS[arch]
    with torch.device("meta"):
        from meer.models.encoder import IREncoder

        enc = IREncoder(64, ARCHS[arch], 512, 1) if arch in ("r50", "r100") else None
    if enc is None:
        enc, head = load_arcface_backbone(state, arch)
        for k, v in state.items():
            mk = arcface_key(k)
            if mk is not None:
                assert torch.equal(enc.state_dict()[mk], v), k
    else:  # the big ones on the meta device: names and shapes only
        target = enc.state_dict()
        mapped = {arcface_key(k) for k in state} - {None}
        assert mapped == set(target)
        assert all(tuple(state[k].shape) == tuple(target[arcface_key(k)].shape) for k in state if arcface_key(k))
        head = {k for k in state if arcface_key(k) is None}
    assert {k.split(".")[0] for k in head} == {"bn2", "fc", "features"}


def test_loads_into_a_meer_encoder():
    cfg = MEERConfig(enc_width=64, enc_layers=ARCHS["r18"], enc_stem_stride=1, split_channels=8, occ_head_width=8,
                     id_dim=16, occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32)
    m = MEER(cfg)
    state = random_state(ARCHS["r18"], seed=1)
    load_arcface_backbone(state, "r18", encoder=m.encoder)
    assert torch.equal(m.encoder.stages[3][1].body[4].weight, state["layer4.1.conv2.weight"])
    assert torch.equal(m.encoder.stem[1].running_var, state["bn1.running_var"])


def test_mismatches_give_one_line_naming_the_file_and_key(tmp_path):
    r50 = tmp_path / "r50.pth"
    torch.save(random_state(ARCHS["r34"], empty=True), r50)
    with pytest.raises(BackboneError, match=r"r50.pth: not an arcface_torch r50 .* first mismatch at 'layer3.6"):
        load_arcface_backbone(r50, "r50")
    narrow = random_state((2, 2, 2, 2), width=64, empty=True)
    narrow["layer2.0.conv1.weight"] = torch.empty(128, 32, 3, 3)
    with pytest.raises(BackboneError, match=r"key 'layer2.0.conv1.weight' has shape \(128, 32, 3, 3\)"):
        load_arcface_backbone(narrow)
    with pytest.raises(BackboneError, match=r"<state dict>: key 'layer1.0.se.fc1.weight' has no place"):
        load_arcface_backbone({**random_state(ARCHS["r18"], empty=True), "layer1.0.se.fc1.weight": torch.empty(1)})
    other = tmp_path / "resnet.pth"
    torch.save({"features.0.weight": torch.empty(3)}, other)
    with pytest.raises(BackboneError, match=r"resnet.pth: not an arcface_torch iresnet .*'features.0.weight'"):
        load_arcface_backbone(other)
    bad = tmp_path / "cut.pth"
    bad.write_bytes(r50.read_bytes()[:1000])
    with pytest.raises(BackboneError, match=r"cut.pth: not a readable arcface_torch backbone"):
        load_arcface_backbone(bad)
    partial = random_state(ARCHS["r18"], empty=True)
    del partial["layer3.1.bn3.running_mean"]
    with pytest.raises(BackboneError, match=r"no weight for meer's 'stages.2.1.body.5.running_mean'"):
        load_arcface_backbone(partial)
