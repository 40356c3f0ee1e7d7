"""quality.periodic_energy: stripes of a known period are found, smooth images are not."""
import numpy as np

from meer.evaluation.quality import periodic_energy


def test_stripes_of_a_period_stand_out():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:64]
    smooth = 120 + 30 * np.sin(xx / 9.0) + 20 * np.cos(yy / 7.0) + rng.normal(0, 1, (4, 32, 64))
    striped = smooth + 12 * np.where(xx % 4 < 2, 1.0, -1.0)  # vertical stripes, period 4 px
    e_s, e_t = periodic_energy(smooth), periodic_energy(striped)
    assert (e_t[4] > 100 * e_s[4]).all() and (e_t[4] > 0.15).all()
    assert np.allclose(e_t[8], e_s[8], atol=0.05)  # other periods barely move
    two = smooth + 10 * np.where(xx % 2 == 0, 1.0, -1.0)
    assert (periodic_energy(two)[2] > 0.15).all()
    rgb = np.repeat(striped[..., None], 3, axis=-1)
    assert np.allclose(periodic_energy(rgb)[4], e_t[4])
