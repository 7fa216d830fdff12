"""Closed-form free-energy and entropy terms for finite-temperature defect thermodynamics.

All functions are pure. Units: energies in eV, temperatures in K, frequencies in THz,
entropies in eV/K (divide by :data:`K_B` for units of k_B), carrier densities in cm^-3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import constants

from snb_ml.errors import InputError

K_B: float = constants.value("Boltzmann constant in eV/K")
"""Boltzmann constant in eV/K."""
H_EV: float = constants.value("Planck constant in eV/Hz")
"""Planck constant in eV s."""


def check_temperature(temperature: float, where: str = "temperature") -> float:
    """Return ``temperature`` as a float, raising :class:`InputError` unless it is finite and > 0 K.

    Args:
        temperature: Temperature in K.
        where: Name of the argument or function, used in the error message.

    Returns:
        The temperature as a float.
    """
    try:
        value = float(temperature)
    except (TypeError, ValueError) as exc:
        msg = f"{where}: temperature {temperature!r} is not a number; give it in K (> 0)."
        raise InputError(msg) from exc
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{where}: temperature must be > 0 K, got {temperature!r}; pass a value in K.")
    return value


def _mode_energies(frequencies_thz: Sequence[float] | np.ndarray, cutoff_thz: float) -> np.ndarray:
    """Convert frequencies (THz) to mode energies hw (eV), dropping ``abs(f) <= cutoff`` (acoustic modes)."""
    freqs = np.asarray(frequencies_thz, dtype=float).ravel()
    imaginary = freqs[freqs < -cutoff_thz]
    if imaginary.size:
        raise InputError(
            f"harmonic terms: {imaginary.size} imaginary (negative) frequencies, lowest "
            f"{imaginary.min():.4f} "
            f"THz, exceed the cutoff {cutoff_thz} THz; relax the structure further or raise cutoff_thz."
        )
    freqs = freqs[np.abs(freqs) > cutoff_thz]
    return H_EV * freqs * 1e12


def harmonic_free_energy(
    frequencies_thz: Sequence[float] | np.ndarray,
    temperature: float,
    include_zero_point: bool = True,
    cutoff_thz: float = 1e-3,
) -> float:
    """Quantum harmonic free energy F = sum_i [hw_i/2 + kT ln(1 - exp(-hw_i/kT))] in eV.

    Modes with ``abs(f) <= cutoff_thz`` (the three acoustic translations) are skipped.

    Args:
        frequencies_thz: Mode frequencies in THz (all branches and q-points, weights already expanded).
        temperature: Temperature in K (> 0).
        include_zero_point: Whether to include the zero-point term sum hw/2.
        cutoff_thz: Frequencies with absolute value at or below this are ignored; more negative ones
            (imaginary modes) raise :class:`InputError`.

    Returns:
        The free energy in eV.
    """
    t = check_temperature(temperature, "harmonic_free_energy")
    hw = _mode_energies(frequencies_thz, cutoff_thz)
    kt = K_B * t
    thermal = kt * np.sum(np.log(-np.expm1(-hw / kt)))
    return float(thermal + (0.5 * hw.sum() if include_zero_point else 0.0))


def harmonic_entropy(
    frequencies_thz: Sequence[float] | np.ndarray, temperature: float, cutoff_thz: float = 1e-3
) -> float:
    """Quantum harmonic entropy S = k_B sum_i [x_i/(e^x_i - 1) - ln(1 - e^-x_i)], x = hw/kT, in eV/K.

    Args:
        frequencies_thz: Mode frequencies in THz.
        temperature: Temperature in K (> 0).
        cutoff_thz: See :func:`harmonic_free_energy`.

    Returns:
        The entropy in eV/K (equal to -dF/dT of :func:`harmonic_free_energy`).
    """
    t = check_temperature(temperature, "harmonic_entropy")
    x = _mode_energies(frequencies_thz, cutoff_thz) / (K_B * t)
    return float(K_B * np.sum(x / np.expm1(x) - np.log(-np.expm1(-x))))


def _weights(n: int, weights: Sequence[float] | np.ndarray | None, name: str) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float).ravel()
    if w.shape != (n,) or np.any(w <= 0):
        raise InputError(f"{name}: weights must be {n} positive numbers (one per minimum), got {weights!r}.")
    return w


def structural_probabilities(
    energies: Sequence[float] | np.ndarray,
    temperature: float,
    degeneracies: Sequence[float] | np.ndarray | None = None,
    vibrational_entropies: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Boltzmann populations p_i ∝ g_i exp(-(U_i - T S_vib,i)/kT) of distinct local minima.

    Args:
        energies: Energies U_i of the distinct minima in eV (any common reference).
        temperature: Temperature in K (> 0).
        degeneracies: g_i, the number of symmetry-equivalent copies of minimum i relative to the copies
            already counted in doped's degeneracy factors, i.e. N_i/N (default 1 each).
        vibrational_entropies: S_vib,i in eV/K (default 0).

    Returns:
        Normalised populations p_i.
    """
    t = check_temperature(temperature, "structural_probabilities")
    g_f = _free_energies(energies, t, vibrational_entropies)
    w = _weights(g_f.size, degeneracies, "structural_probabilities")
    log_p = np.log(w) - (g_f - g_f.min()) / (K_B * t)
    p = np.exp(log_p - log_p.max())
    return p / p.sum()


def _free_energies(
    energies: Sequence[float] | np.ndarray,
    t: float,
    vibrational_entropies: Sequence[float] | np.ndarray | None,
) -> np.ndarray:
    u = np.asarray(energies, dtype=float).ravel()
    if u.size == 0:
        raise InputError("structural terms: no minima given; pass at least one energy.")
    if vibrational_entropies is None:
        return u
    s = np.asarray(vibrational_entropies, dtype=float).ravel()
    if s.shape != u.shape:
        raise InputError(
            f"structural terms: {s.size} vibrational entropies for {u.size} minima; give one per minimum."
        )
    return u - t * s


def structural_entropy(
    energies: Sequence[float] | np.ndarray,
    temperature: float,
    degeneracies: Sequence[float] | np.ndarray | None = None,
    vibrational_entropies: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Structural (configurational) entropy s_struc = -k_B sum_i p_i ln p_i over distinct minima, in eV/K.

    ``p_i`` are from :func:`structural_probabilities`. With all ``degeneracies`` equal to 1,
    ``coarse_grained_free_energy = sum_i p_i g_f,i - T s_struc`` exactly; in general the two routes
    differ by ``-kT sum_i p_i ln(N_i/N)`` (see :func:`coarse_grained_free_energy`).

    Args:
        energies: Energies of the distinct minima in eV.
        temperature: Temperature in K (> 0).
        degeneracies: N_i/N for each minimum (default 1).
        vibrational_entropies: S_vib,i in eV/K (default 0).

    Returns:
        The entropy in eV/K.
    """
    p = structural_probabilities(energies, temperature, degeneracies, vibrational_entropies)
    p = p[p > 0]
    return float(-K_B * np.sum(p * np.log(p)))


def coarse_grained_free_energy(
    free_energies: Sequence[float] | np.ndarray,
    temperature: float,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Coarse-grained free energy g_eff = -kT ln(sum_i (N_i/N) exp(-g_f,i/kT)) in eV.

    ``N_i`` is the number of equivalent copies of minimum ``i`` in the crystal and ``N`` the number
    already counted by doped's orientational degeneracy/site multiplicity, so ``N_i/N`` (``weights``) is
    1 for a minimum whose copies are exactly those doped counts. Identity with the entropy route:
    ``g_eff = sum_i p_i g_f,i - T s_struc - kT sum_i p_i ln(N_i/N)``, where ``p_i`` and ``s_struc`` come from
    :func:`structural_probabilities` / :func:`structural_entropy` with ``degeneracies=weights``.

    Args:
        free_energies: g_f,i = U_i - T S_vib,i of the distinct minima in eV.
        temperature: Temperature in K (> 0).
        weights: N_i/N per minimum (default 1).

    Returns:
        The coarse-grained free energy in eV.
    """
    t = check_temperature(temperature, "coarse_grained_free_energy")
    g_f = _free_energies(free_energies, t, None)
    w = _weights(g_f.size, weights, "coarse_grained_free_energy")
    kt = K_B * t
    g_min = g_f.min()
    return float(g_min - kt * np.log(np.sum(w * np.exp(-(g_f - g_min) / kt))))


def _find_gap(
    energies: np.ndarray, dos: np.ndarray, reference: float | None, tol: float
) -> tuple[float, float]:
    """Return (vbm, cbm) of the zero-DOS window containing ``reference`` (largest interior one if None)."""
    occupied = dos > tol
    if not occupied.any():
        raise InputError("electronic_entropy: the DOS is zero everywhere; check the DOS arrays.")
    idx = np.flatnonzero(occupied)
    windows = [(energies[a], energies[b]) for a, b in zip(idx[:-1], idx[1:], strict=True) if b - a > 1]
    if reference is not None:
        windows = [(lo, hi) for lo, hi in windows if lo < reference < hi]
    if not windows:
        where = f" at the reference energy {reference:.4f} eV" if reference is not None else ""
        raise InputError(
            f"electronic_entropy: the DOS has no gap{where} (DOS > {tol} throughout), so a mid-gap Fermi "
            "level is undefined; pass fermi_level explicitly (e.g. for a metal) or check the DOS."
        )
    return max(windows, key=lambda w: w[1] - w[0])


def electronic_entropy(
    energies: Sequence[float] | np.ndarray,
    dos: Sequence[float] | np.ndarray,
    temperature: float,
    fermi_level: float | None = None,
    gamma: float = 2.0,
    reference_energy: float | None = None,
    tol: float = 1e-8,
) -> float:
    """Electronic entropy in the fixed-DOS approximation, S = -gamma k_B ∫ D(E)[f ln f + (1-f) ln(1-f)] dE.

    Args:
        energies: Energy grid in eV (increasing).
        dos: D(E) in states/eV for one spin channel. Use ``gamma=2`` for a spin-unpolarised D(E) given per
            spin channel, ``gamma=1`` for each channel of a spin-polarised calculation (sum the two) or for
            a total DOS that already counts both spins (VASP ISPIN=1 convention).
        temperature: Temperature in K (> 0).
        fermi_level: Fermi level in eV. Default: middle of the gap (see ``reference_energy``).
        gamma: Spin factor (see ``dos``).
        reference_energy: Energy inside the gap used to pick it (e.g. the DOS Fermi energy); default:
            the widest zero-DOS window strictly inside the energy range.
        tol: DOS values at or below this count as zero when finding the gap.

    Returns:
        The entropy in eV/K.
    """
    t = check_temperature(temperature, "electronic_entropy")
    e = np.asarray(energies, dtype=float).ravel()
    d = np.asarray(dos, dtype=float).ravel()
    if e.shape != d.shape or e.size < 2:
        raise InputError(
            f"electronic_entropy: energies ({e.size}) and dos ({d.size}) must be equal-length arrays."
        )
    if fermi_level is None:
        vbm, cbm = _find_gap(e, d, reference_energy, tol)
        fermi_level = 0.5 * (vbm + cbm)
    x = np.clip((e - fermi_level) / (K_B * t), -700, 700)
    f = 1.0 / (1.0 + np.exp(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where((f > 0) & (f < 1), f * np.log(f) + (1 - f) * np.log1p(-f), 0.0)
    return float(-gamma * K_B * np.trapezoid(d * h, e))


def electronic_entropy_from_dos(dos: Any, temperature: float, fermi_level: float | None = None) -> float:
    """Electronic entropy (eV/K) from a pymatgen ``Dos``/``CompleteDos``/``FermiDos``.

    Each spin channel present is integrated with ``gamma=1`` and summed (pymatgen/VASP densities of an
    unpolarised calculation already count both spins). The default Fermi level is mid-gap, the gap
    being the zero-DOS window around ``dos.efermi``.

    Args:
        dos: pymatgen DOS object (with ``energies``, ``densities`` and ``efermi``).
        temperature: Temperature in K (> 0).
        fermi_level: Fermi level in eV; default mid-gap.

    Returns:
        The entropy in eV/K.
    """
    densities: Mapping[Any, np.ndarray] = getattr(dos, "densities", None) or {}
    if not densities:
        raise InputError(
            f"electronic_entropy_from_dos: {type(dos).__name__} has no densities; pass a pymatgen Dos."
        )
    energies = np.asarray(dos.energies, dtype=float)
    if fermi_level is None:
        total = np.sum([np.asarray(v, dtype=float) for v in densities.values()], axis=0)
        vbm, cbm = _find_gap(energies, total, float(dos.efermi), 1e-8)
        fermi_level = 0.5 * (vbm + cbm)
    return float(
        sum(electronic_entropy(energies, d, temperature, fermi_level, gamma=1.0) for d in densities.values())
    )


def effective_dos(mass_ratio: float, temperature: float) -> float:
    """Effective band-edge density of states N = 2(2 pi m* k_B T / h^2)^(3/2) in cm^-3.

    Args:
        mass_ratio: Effective mass m*/m_e (> 0).
        temperature: Temperature in K (> 0).

    Returns:
        N_C (electrons) or N_V (holes) in cm^-3.
    """
    t = check_temperature(temperature, "effective_dos")
    if mass_ratio <= 0:
        raise InputError(f"effective_dos: mass_ratio must be > 0 (m*/m_e), got {mass_ratio}.")
    m = mass_ratio * constants.m_e
    per_m3 = 2.0 * (2.0 * np.pi * m * constants.k * t / constants.h**2) ** 1.5
    return float(per_m3 * 1e-6)


def carrier_fermi_level(
    density: float, temperature: float, band_edge: float, mass_ratio: float, carrier: str = "electron"
) -> float:
    """Non-degenerate quasi-Fermi level of extra carriers from the effective DOS.

    Electrons: E_F = E_CBM + kT ln(n/N_C); holes: E_F = E_VBM - kT ln(p/N_V).

    Args:
        density: Carrier density n or p in cm^-3 (> 0).
        temperature: Temperature in K (> 0).
        band_edge: E_CBM (electrons) or E_VBM (holes) in eV.
        mass_ratio: Effective mass m*/m_e.
        carrier: ``"electron"`` or ``"hole"``.

    Returns:
        The Fermi level in eV.
    """
    if density <= 0:
        raise InputError(f"carrier_fermi_level: carrier density must be > 0 cm^-3, got {density}.")
    if carrier not in ("electron", "hole"):
        raise InputError(f"carrier_fermi_level: carrier must be 'electron' or 'hole', got {carrier!r}.")
    n_eff = effective_dos(mass_ratio, temperature)
    shift = K_B * float(temperature) * np.log(density / n_eff)
    return float(band_edge + shift if carrier == "electron" else band_edge - shift)


def carrier_entropy(density: float, temperature: float, mass_ratio: float) -> float:
    """Entropy per extra (non-degenerate, Boltzmann) carrier, s = k_B [5/2 + ln(N_eff/n)], in eV/K.

    Args:
        density: Carrier density in cm^-3 (> 0).
        temperature: Temperature in K (> 0).
        mass_ratio: Effective mass m*/m_e.

    Returns:
        The entropy per carrier in eV/K.
    """
    if density <= 0:
        raise InputError(f"carrier_entropy: carrier density must be > 0 cm^-3, got {density}.")
    return float(K_B * (2.5 + np.log(effective_dos(mass_ratio, temperature) / density)))


def degeneracy_entropy(degeneracy: float) -> float:
    """Entropy k_B ln g of a degeneracy factor g (spin or orientational), in eV/K."""
    if degeneracy <= 0:
        raise InputError(f"degeneracy_entropy: degeneracy must be > 0, got {degeneracy}.")
    return float(K_B * np.log(degeneracy))


def degeneracy_entropies(defect_entry: Any) -> dict[str, float]:
    """Spin and orientational entropies k_B ln g (eV/K) from a doped ``DefectEntry.degeneracy_factors``.

    Args:
        defect_entry: doped ``DefectEntry``.

    Returns:
        ``{"spin": S_spin, "orientational": S_orient}`` in eV/K.
    """
    factors = getattr(defect_entry, "degeneracy_factors", None) or {}
    keys = {"spin": "spin degeneracy", "orientational": "orientational degeneracy"}
    missing = [key for key in keys.values() if key not in factors]
    if missing:
        raise InputError(
            f"{getattr(defect_entry, 'name', 'defect entry')}: degeneracy_factors lacks {missing}; set them "
            "in DefectEntry.degeneracy_factors (doped parsing does this) before computing entropies."
        )
    return {short: degeneracy_entropy(float(factors[key])) for short, key in keys.items()}
