"""Rebuild ``CdTe_levels_entries.json.gz``: real doped ``DefectEntry`` objects, trimmed for fast tests.

Source: doped's published CdTe ``DefectThermodynamics`` (HSE+SOC, Freysoldt/Kumagai corrections; MIT
licence), committed in ``examples/doped_thermo/data/CdTe_thermo_wout_meta.json.gz``. Kept: the v_Cd
(0, -1, -2: a negative-U defect with a metastable -1) and Cd_Te (+2 ... -2) entries with their
structures, energies, corrections, bulk reference and the calculation metadata that formation energies
and transition levels read (VBM, band gap, dielectric constant, bulk site); dropped: the large parsing
metadata (eigenvalues, run metadata, LOCPOT averages). Run from the repository root:
``python tests/data/doped/make_levels_fixture.py``.
"""

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "examples" / "doped_thermo" / "data" / "CdTe_thermo_wout_meta.json.gz"
TARGET = Path(__file__).resolve().parent / "CdTe_levels_entries.json.gz"
KEEP = ("v_Cd_", "Cd_Te_")
METADATA = ("vbm", "band_gap", "cbm", "dielectric", "bulk_site")


def main() -> None:
    """Write the trimmed entries as a ``{name: DefectEntry}`` JSON (monty)."""
    from monty.serialization import dumpfn, loadfn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thermo = loadfn(SOURCE)
    entries = {}
    for name, entry in thermo.defect_entries.items():
        if not name.startswith(KEEP):
            continue
        entry.calculation_metadata = {k: entry.calculation_metadata[k] for k in METADATA}
        entry.corrections_metadata = {}
        entry.defect_supercell = None
        entry.bulk_supercell = None
        entry.conventional_structure = None
        entries[name] = entry
    dumpfn(entries, TARGET)
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1024:.0f} kB): {', '.join(entries)}")


if __name__ == "__main__":
    main()
