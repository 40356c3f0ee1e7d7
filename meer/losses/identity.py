"""Id-preserving loss: the restored face must embed where the clean face of the same image embeds.

``id_preserving_loss(emb_restored, emb_clean) = mean_b(1 - cos(emb_restored_b, emb_clean_b))`` (float32,
inputs need not be normalised). Where its gradient goes (generator, recognizer, or both) is decided by how
the embeddings were computed: :meth:`meer.models.meer.MEER.id_embeddings` honours the config switches
``id_grad_to_generator`` / ``id_grad_to_recognizer``. The margin loss on the restored face is
``MarginHead.loss(emb_restored, labels)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def id_preserving_loss(emb_restored: torch.Tensor, emb_clean: torch.Tensor) -> torch.Tensor:
    if emb_restored.shape != emb_clean.shape or emb_restored.dim() != 2:
        raise ValueError(f"embeddings must both be B x D, got {tuple(emb_restored.shape)} and {tuple(emb_clean.shape)}")
    with torch.autocast(device_type=emb_restored.device.type, enabled=False):
        cos = F.cosine_similarity(emb_restored.float(), emb_clean.float(), dim=1, eps=1e-8)
        return (1.0 - cos).mean()
