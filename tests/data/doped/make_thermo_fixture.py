"""Rebuild ``CdTe_vCd_CdTe_thermo.json.gz``: a real doped ``DefectThermodynamics``, trimmed for fast tests.

The trimmed v_Cd (0, -1, -2) and Cd_Te (+2 ... -2) entries of ``CdTe_levels_entries.json.gz`` (see
``make_levels_fixture.py``) with the chemical potentials, elemental references, VBM and band gap of
doped's published CdTe ``DefectThermodynamics`` (``examples/doped_thermo/data``, MIT licence), saved
by doped's own ``DefectThermodynamics.to_json``. Run from the repository root:
``python tests/data/doped/make_thermo_fixture.py``.
"""

import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "examples" / "doped_thermo" / "data" / "CdTe_thermo_wout_meta.json.gz"
ENTRIES = HERE / "CdTe_levels_entries.json.gz"
TARGET = HERE / "CdTe_vCd_CdTe_thermo.json.gz"


def main() -> None:
    """Write the trimmed DefectThermodynamics with doped's ``to_json``."""
    from doped.thermodynamics import DefectThermodynamics
    from monty.serialization import loadfn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = loadfn(SOURCE)
        entries = loadfn(ENTRIES)
        thermo = DefectThermodynamics(
            list(entries.values()), chempots=full.chempots, el_refs=full.el_refs, vbm=full.vbm,
            band_gap=full.band_gap,
        )  # fmt: skip
        thermo.to_json(str(TARGET))
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1024:.0f} kB): {', '.join(thermo.defect_entries)}")


if __name__ == "__main__":
    main()
