"""Finite-temperature defect free energies on doped's published CdTe example (real HSE+SOC DFT data).

Run from anywhere (about 1-2 min on 2 cores, no ML model needed; the CHGNet phonon results are read
from ``data/``):

.. code-block:: bash

    python examples/doped_thermo/demo_finite_temperature.py --outdir /tmp/ft_demo

What it does:

1. Loads doped's ``DefectThermodynamics`` of intrinsic defects in CdTe
   (``data/CdTe_thermo_wout_meta.json.gz``, 29 charge states, HSE+SOC, from doped's ``examples/CdTe``)
   and the HSE+SOC bulk DOS (``data/CdTe_prim_k101010_fermi_dos.json.gz``, total DOS of doped's
   ``tests/data/CdTe`` vasprun).
2. Wraps it with :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics` with every term
   switched off and asserts that formation energies, equilibrium concentrations, the equilibrium Fermi
   level, annealed/quenched Fermi levels and concentrations and transition levels equal doped's
   exactly (``==``, ``assert_frame_equal(check_exact=True)``).
3. Switches the terms on for V_Cd (0, -1, -2): ΔF_vib(T) from CHGNet phonons (``snb-ml free-energy``,
   ``data/v_Cd_*_fvib.json``), the structural term from the CHGNet minima of the ShakeNBreak v_Cd_0
   distortions (``data/v_Cd_0_minima_chgnet.json``) and a *model* electronic term for v_Cd_0 (HSE+SOC
   bulk DOS plus two empty acceptor states at doped's ε(0/-2), see :func:`model_electronic_term`).
   Spin and orientational entropies are doped's own degeneracy factors (already in doped's g) and are
   reported in the breakdown only, never added twice.
4. Prints the s_f breakdown (k_B) at the annealing temperature, the changes in concentrations and
   Fermi levels at the annealing and quenched temperatures, the transition levels with and without
   the terms, and saves the g_f(T) and concentration-vs-T plots.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
THERMO = DATA / "CdTe_thermo_wout_meta.json.gz"
DOS = DATA / "CdTe_prim_k101010_fermi_dos.json.gz"
MINIMA = DATA / "v_Cd_0_minima_chgnet.json"
CHARGES = (0, -1, -2)
#: Minima closer than this in energy (eV) and with the same point group are one minimum.
SAME_MINIMUM_EV = 5e-3


def load_thermo() -> Any:
    """doped's published CdTe ``DefectThermodynamics`` with the HSE+SOC bulk DOS attached."""
    from monty.serialization import loadfn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thermo = loadfn(THERMO)
        thermo.bulk_dos = loadfn(DOS)
    return thermo


def assert_same(ours: Any, doped: Any, what: str) -> None:
    """Assert exact equality of doped outputs (DataFrames, tuples of them, floats)."""
    if isinstance(doped, pd.DataFrame):
        pd.testing.assert_frame_equal(ours, doped, check_exact=True, obj=what)
    elif isinstance(doped, tuple | list):
        assert type(ours) is type(doped) and len(ours) == len(doped), what
        for i, (a, b) in enumerate(zip(ours, doped, strict=True)):
            assert_same(a, b, f"{what}[{i}]")
    elif doped is None:
        assert ours is None, what
    else:
        assert ours == doped or (np.isnan(ours) and np.isnan(doped)), f"{what}: {ours!r} != {doped!r}"


def doped_outputs(thermo: Any, ta: float, tq: float, limit: str) -> dict[str, Any]:
    """The doped results compared with terms off (each a call of doped's public API)."""
    out = {
        "get_formation_energies": thermo.get_formation_energies(limit=limit),
        "get_transition_levels": thermo.get_transition_levels(),
        "get_transition_levels(all=True)": thermo.get_transition_levels(all=True),
        "get_equilibrium_fermi_level": thermo.get_equilibrium_fermi_level(temperature=ta, limit=limit),
    }
    for t in (tq, ta):
        out[f"get_equilibrium_concentrations(T={t:g})"] = thermo.get_equilibrium_concentrations(
            temperature=t, limit=limit, fermi_level=0.5 * thermo.band_gap
        )
    out["get_fermi_level_and_concentrations"] = thermo.get_fermi_level_and_concentrations(
        annealing_temperature=ta, quenched_temperature=tq, limit=limit, return_annealing_values=True
    )
    return out


def structural_minima() -> dict[str, float]:
    """Distinct CHGNet minima of v_Cd_0 (same point group within :data:`SAME_MINIMUM_EV` merged)."""
    minima = json.loads(MINIMA.read_text())["minima"]
    distinct: dict[str, float] = {}
    for label, info in sorted(minima.items(), key=lambda kv: kv[1]["energy"]):
        if not any(
            abs(info["energy"] - e) < SAME_MINIMUM_EV and label_group.endswith(info["point_group"])
            for label_group, e in distinct.items()
        ):
            distinct[f"{label} {info['point_group']}"] = info["energy"]
    return distinct


def model_electronic_term(thermo: Any, level: float, n_states: float = 2.0, width: float = 0.02) -> Any:
    """Model electronic term of v_Cd_0: HSE+SOC bulk DOS (64-atom cell) plus empty acceptor states.

    The published doped files hold no defect DOS, so the defect DOS here is a model: the bulk DOS scaled to
    the 64-atom supercell plus ``n_states`` empty states (Gaussian, ``width`` eV) at ``level`` eV above
    the VBM (doped's ε(0/-2) as a stand-in for the Kohn-Sham level of the two holes of V_Cd^0). The
    neutral cell's Fermi level is midway between the VBM and that level; the bulk's is mid-gap.
    """
    from pymatgen.electronic_structure.dos import Dos

    from snb_ml.thermo.terms import electronic_term

    fdos = thermo.bulk_dos
    energies = np.asarray(fdos.energies)
    cells = 32  # 64-atom supercell / 2-atom primitive cell of the DOS
    (spin, density), *_ = fdos.densities.items()
    vbm = thermo.vbm
    peak = n_states * np.exp(-0.5 * ((energies - vbm - level) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    bulk = Dos(fdos.efermi, energies, {spin: cells * np.asarray(density)})
    defect = Dos(fdos.efermi, energies, {spin: cells * np.asarray(density) + peak})
    return electronic_term(
        defect, bulk, defect_fermi_level=vbm + 0.5 * level, bulk_fermi_level=vbm + 0.5 * thermo.band_gap
    )


def build_terms(thermo: Any) -> dict[str, dict[str, Any]]:
    """The finite-temperature terms of V_Cd (per charge state)."""
    from snb_ml.thermo.terms import structural_term, vibrational_term_from_json

    terms: dict[str, dict[str, Any]] = {}
    for q in CHARGES:  # doped's entry names v_Cd_0, v_Cd_-1, v_Cd_-2
        terms[f"v_Cd_{q}"] = {"vib": vibrational_term_from_json(DATA / f"v_Cd_{q}_fvib.json")}
    terms["v_Cd_0"]["struc"] = structural_term(structural_minima())
    level = float(thermo.get_transition_levels().loc[("v_Cd", "ε(0/-2)"), "eV from VBM"])
    terms["v_Cd_0"]["elec"] = model_electronic_term(thermo, level)
    return terms


def annealed_quenched(ft: Any, ta: float, tq: float, limit: str) -> dict[str, Any]:
    """Fermi levels, carriers and concentrations annealed at ``ta`` and quenched to ``tq``."""
    result = ft.get_fermi_level_and_concentrations(
        annealing_temperature=ta,
        quenched_temperature=tq,
        limit=limit,
        return_annealing_values=True,
        skip_formatting=True,
    )
    quenched, annealed = result[3], result[7]
    col = "Concentration (cm^-3)"
    return {
        "E_F quenched": result[0],
        "p quenched": result[2],
        "E_F annealing": result[4],
        "p annealing": result[6],
        "n annealing": result[5],
        "totals annealing": annealed.groupby("Defect", sort=False)[col].sum(),
        "v_Cd quenched": quenched.loc["v_Cd", col],
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annealing", type=float, default=873.0, help="Annealing temperature (K).")
    parser.add_argument("--quenched", type=float, default=300.0, help="Quenched temperature (K).")
    parser.add_argument("--limit", default="CdTe-Te", help="doped chemical-potential limit (Te-rich).")
    parser.add_argument("--outdir", default="ft_demo_output", help="Folder for the plots and JSON.")
    parser.add_argument("--no-plots", action="store_true", help="Skip the plots (faster).")
    args = parser.parse_args()
    ta, tq, limit = args.annealing, args.quenched, args.limit
    warnings.simplefilter("ignore")
    pd.set_option("display.width", 150)
    from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics

    start = time.perf_counter()
    thermo = load_thermo()
    terms = build_terms(thermo)
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(thermo, terms=terms)

    # 1. terms off: doped's numbers exactly
    for name in ft.term_names:
        ft.disable_term(name)
    reference = doped_outputs(thermo, ta, tq, limit)
    ours = doped_outputs(ft, ta, tq, limit)
    ours["get_transition_levels"] = ft.get_transition_levels(temperature=ta)
    for what, value in reference.items():
        assert_same(ours[what], value, what)
    print(f"Terms off: {len(reference)} doped outputs reproduced exactly ({', '.join(reference)}).")

    # 2. terms on
    off = annealed_quenched(ft, ta, tq, limit)
    for name in ft.term_names:
        ft.enable_term(name)
    on = annealed_quenched(ft, ta, tq, limit)
    starts = json.loads(MINIMA.read_text())["minima"]
    print(f"\nTerms on (limit {limit}): {ft.term_names} for {sorted(terms)}.")
    distinct = sorted(structural_minima())
    print(
        f"Structural term of v_Cd_0: {len(starts)} ShakeNBreak starts relaxed with CHGNet -> "
        f"{len(distinct)} distinct {'minimum' if len(distinct) == 1 else 'minima'} {distinct}."
    )
    print(f"\nFormation-entropy breakdown s_f (k_B) at T_anneal = {ta:g} K (spin, orientational: doped's g):")
    table = ft.entropy_breakdown(ta)
    print(table.loc[[n for n in table.index if n.startswith("v_Cd")]].round(2).to_string())
    corr = {n: ft.term_values(n, ta) for n in terms}
    print(
        f"\nΔg_f terms (eV) at {ta:g} K: "
        + "; ".join(f"{n}: " + ", ".join(f"{k} {v:+.3f}" for k, v in c.items()) for n, c in corr.items())
    )
    print(
        f"\nAnnealed at {ta:g} K:  E_F {off['E_F annealing']:.3f} -> {on['E_F annealing']:.3f} eV, "
        f"p {off['p annealing']:.3g} -> {on['p annealing']:.3g} cm^-3"
    )
    totals = pd.DataFrame({"no terms": off["totals annealing"], "terms": on["totals annealing"]})
    totals["ratio"] = totals["terms"] / totals["no terms"]
    print(totals.loc[totals["no terms"] > 1e-3].to_string(float_format=lambda x: f"{x:.3g}"))
    print(
        f"\nQuenched to {tq:g} K: E_F {off['E_F quenched']:.3f} -> {on['E_F quenched']:.3f} eV, "
        f"p {off['p quenched']:.3g} -> {on['p quenched']:.3g} cm^-3"
    )
    vcd = pd.DataFrame({"no terms": off["v_Cd quenched"], "terms": on["v_Cd quenched"]})
    vcd["ratio"] = vcd["terms"] / vcd["no terms"]
    print(vcd.to_string(float_format=lambda x: f"{x:.3g}"))

    print(f"\nTransition levels of v_Cd (eV above VBM): 0 K (doped) vs g_f({ta:g} K) with terms:")
    for all_levels in (False, True):
        levels = pd.concat(
            {
                "doped (0 K)": thermo.get_transition_levels(all=all_levels).loc["v_Cd", "eV from VBM"],
                f"terms, {ta:g} K": ft.get_transition_levels(all=all_levels, temperature=ta).loc[
                    "v_Cd", "eV from VBM"
                ],
            },
            axis=1,
        )
        print(levels.to_string())

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ft.to_json(outdir / "CdTe_thermo_with_terms.json")
    if not args.no_plots:
        from snb_ml.thermo.plots import plot_concentrations_vs_T, plot_formation_free_energy_vs_T

        temps = np.arange(300.0, 1201.0, 50.0)
        for name in terms:
            fig = plot_formation_free_energy_vs_T(
                ft, name, temps, fermi_level=round(on["E_F annealing"], 3), limit=limit
            )
            fig.savefig(outdir / f"g_f_vs_T_{name}.png", dpi=120)
        fig = plot_concentrations_vs_T(
            ft, np.arange(500.0, 1101.0, 100.0), quenched_temperature=tq, limit=limit
        )
        fig.savefig(outdir / "concentrations_vs_T_quenched.png", dpi=120)
    print(
        f"\nWrote {outdir}/ (JSON with terms{'' if args.no_plots else ', plots'}); "
        f"{time.perf_counter() - start:.0f} s."
    )


if __name__ == "__main__":
    main()
