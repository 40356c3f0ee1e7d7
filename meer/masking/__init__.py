"""Synthetic masks on faces: a per-image API with exact ground truth and a batched torch op.

* ``apply_mask(image_rgb, landmarks, spec | rng | seed) -> MaskedFace(image, mask, spec)``
* ``sample_spec(rng, kinds=..., coverages=..., textures=...) -> MaskSpec`` (JSON via ``to_dict``)
* ``MaskAugment`` (``meer.masking.batch``): the same masks on a B x 3 x H x W batch, CPU or CUDA.

Ground truth: the occlusion mask is exactly the set of pixels whose value changed.
"""
from meer.masking.apply import MaskedFace, apply_mask
from meer.masking.batch import MaskAugment
from meer.masking.sampling import sample_spec, spec_from_params
from meer.masking.spec import COVERAGES, KINDS, PALETTE, TEXTURES, MaskSpec, MaskSpecError
from meer.masking.templates import TemplateLibrary

__all__ = ["apply_mask", "MaskedFace", "MaskAugment", "sample_spec", "spec_from_params", "MaskSpec",
           "MaskSpecError", "KINDS", "COVERAGES", "TEXTURES", "PALETTE", "TemplateLibrary"]
