"""A tiny MEER overfits 4 masked crops of the bundled face photo: masked-region L1 and occlusion loss fall."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from meer.losses.occlusion import occlusion_loss
from meer.losses.reconstruction import ReconstructionLoss
from meer.models.meer import MEER, MEERConfig
from meer.utils.images import read_image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
S = 32


def _data():
    rgb = torch.from_numpy(read_image(EXAMPLE).rgb.copy()).permute(2, 0, 1).float() / 255.0
    crops = [rgb[:, 40:360, 100:420], rgb[:, 60:380, 90:410], rgb[:, 20:340, 120:440], rgb[:, 50:370, 110:430]]
    clean = F.interpolate(torch.stack(crops), size=(S, S), mode="area")
    clean[1] = clean[1].flip(-1)
    mask = torch.zeros(4, 1, S, S)
    for i in range(4):
        mask[i, :, 17 + i : S - 2, 5 : S - 5] = 1.0
    colors = torch.tensor([[0.3, 0.6, 0.9], [0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0.2, 0.7, 0.4]]).view(4, 3, 1, 1)
    masked = clean * (1 - mask) + mask * colors
    return clean, masked, mask


def test_tiny_overfit_lowers_masked_l1_and_occlusion_loss():
    torch.manual_seed(0)
    clean, masked, mask = _data()
    model = MEER(MEERConfig(image_size=S, enc_width=8, enc_layers=(1, 1), split_channels=8, occ_head_width=8,
                            id_dim=16, occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32))
    rec = ReconstructionLoss(l1_weight=1.0, visible_weight=0.1, lpips_weight=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.5, 0.99))

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(masked, mask)
            l1 = ((out.restored - clean).abs() * mask).sum() / (3 * mask.sum())
            occ = occlusion_loss(out.occ_logits, mask)
        model.train()
        return l1.item(), occ.item()

    l1_start, occ_start = evaluate()
    for _ in range(30):
        out = model(masked, mask)
        loss_rec, _ = rec(out.restored, clean, mask, generated=out.generated)
        loss = loss_rec + occlusion_loss(out.occ_logits, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    l1_end, occ_end = evaluate()
    assert l1_end < 0.5 * l1_start, (l1_start, l1_end)
    assert occ_end < 0.7 * occ_start, (occ_start, occ_end)
