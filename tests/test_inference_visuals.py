"""meer.inference.visuals: pictures written beside restored photos."""
import numpy as np


def test_pixelate_blocks_are_block_means():
    from meer.inference.visuals import pixelate

    img = np.zeros((4, 6, 3), dtype=np.uint8)
    img[:2, :3] = [10, 20, 30]
    img[0, 0] = [50, 60, 70]  # one brighter pixel in the top-left block
    out = pixelate(img, cells=2)
    assert out.shape == img.shape and out.dtype == img.dtype
    np.testing.assert_array_equal(out[0, 0], np.round((np.array([50, 60, 70]) + 5 * np.array([10, 20, 30])) / 6))
    assert (out[:2, :3] == out[0, 0]).all() and (out[2:, 3:] == 0).all()
    gray = pixelate(np.arange(16, dtype=np.uint8).reshape(4, 4), cells=1)
    assert (gray == round(np.arange(16).mean())).all()
