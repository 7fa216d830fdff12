"""Closed-form checks of snb_ml.thermo.entropy."""

import numpy as np
import pytest

from snb_ml.errors import InputError
from snb_ml.thermo import entropy as ent

K = ent.K_B


def test_harmonic_free_energy_and_entropy_match_analytic():
    freqs = [2.0, 5.0, 9.0]
    t = 400.0
    hw = ent.H_EV * np.array(freqs) * 1e12
    x = hw / (K * t)
    f_expected = np.sum(hw / 2 + K * t * np.log(1 - np.exp(-x)))
    s_expected = K * np.sum(x / (np.exp(x) - 1) - np.log(1 - np.exp(-x)))
    assert ent.harmonic_free_energy(freqs, t) == pytest.approx(f_expected, rel=1e-12)
    assert ent.harmonic_entropy(freqs, t) == pytest.approx(s_expected, rel=1e-12)
    dfdt = (ent.harmonic_free_energy(freqs, t + 0.01) - ent.harmonic_free_energy(freqs, t - 0.01)) / 0.02
    assert -dfdt == pytest.approx(s_expected, rel=1e-6)


def test_harmonic_limits():
    hw = ent.H_EV * 10e12
    assert ent.harmonic_free_energy([10.0], 1.0) == pytest.approx(hw / 2, rel=1e-12)
    assert ent.harmonic_entropy([10.0], 1.0) == pytest.approx(0.0, abs=1e-30)
    t = 1e5
    classical = K * t * np.log(hw / (K * t))
    assert ent.harmonic_free_energy([10.0], t) == pytest.approx(classical, rel=1e-4)
    assert ent.harmonic_free_energy([0.0, 0.0, 0.0, 10.0], t) == ent.harmonic_free_energy([10.0], t)
    with pytest.raises(InputError, match="imaginary"):
        ent.harmonic_free_energy([-1.0, 10.0], 300)


def test_two_degenerate_minima_entropy_and_coarse_grained():
    t, e = 500.0, 0.3
    assert ent.structural_entropy([e, e], t) == pytest.approx(K * np.log(2), rel=1e-12)
    g_eff = ent.coarse_grained_free_energy([e, e], t)
    assert g_eff == pytest.approx(e - t * K * np.log(2), rel=1e-12)
    energies, s_vib, w = np.array([0.0, 0.05, 0.2]), np.array([1e-4, 3e-4, 0.0]), np.array([1.0, 2.0, 0.5])
    p = ent.structural_probabilities(energies, t, w, s_vib)
    g_f = energies - t * s_vib
    s = ent.structural_entropy(energies, t, w, s_vib)
    route = np.sum(p * g_f) - t * s - K * t * np.sum(p * np.log(w))
    assert ent.coarse_grained_free_energy(g_f, t, w) == pytest.approx(route, rel=1e-12)


def test_two_level_electronic_entropy():
    t, delta = 800.0, 0.2
    e = np.linspace(-1, 1, 200001)
    d = np.zeros_like(e)
    width = 1e-3
    d[np.abs(e + delta) < width / 2] = 1 / width
    d[np.abs(e - delta) < width / 2] = 1 / width
    d *= 2 / np.trapezoid(d, e)  # exactly one state per level on this grid
    f = 1 / (1 + np.exp(delta / (K * t)))
    h = f * np.log(f) + (1 - f) * np.log(1 - f)
    expected = -2 * K * 2 * h  # gamma = 2, two levels
    assert ent.electronic_entropy(e, d, t) == pytest.approx(expected, rel=1e-3)
    with pytest.raises(InputError, match="no gap"):
        ent.electronic_entropy(e, np.ones_like(e), t)
    assert ent.electronic_entropy(e, np.ones_like(e), t, fermi_level=0.0) > 0


def test_effective_dos_and_carrier_level():
    assert ent.effective_dos(1.0, 300) == pytest.approx(2.51e19, rel=5e-3)
    n_c = ent.effective_dos(0.3, 600)
    assert n_c == pytest.approx(ent.effective_dos(1.0, 300) * 0.3**1.5 * 2**1.5, rel=1e-12)
    assert ent.carrier_fermi_level(n_c / 10, 600, 1.5, 0.3) == pytest.approx(1.5 - K * 600 * np.log(10))
    assert ent.carrier_fermi_level(n_c / 10, 600, 0.0, 0.3, carrier="hole") == pytest.approx(
        K * 600 * np.log(10)
    )
    assert ent.carrier_entropy(n_c, 600, 0.3) == pytest.approx(2.5 * K)
    assert ent.degeneracy_entropy(2) == pytest.approx(K * np.log(2))


@pytest.mark.parametrize("t", [0, -5, float("nan")])
def test_non_positive_temperature_errors(t):
    for call in (
        lambda: ent.harmonic_free_energy([1.0], t),
        lambda: ent.harmonic_entropy([1.0], t),
        lambda: ent.structural_entropy([0.0], t),
        lambda: ent.coarse_grained_free_energy([0.0], t),
        lambda: ent.electronic_entropy([0, 1, 2], [1, 0, 1], t),
        lambda: ent.effective_dos(1.0, t),
    ):
        with pytest.raises(InputError, match="> 0 K"):
            call()
