"""A small "DFT" search for the loop tests: H_i in 32-atom Cu, EMT as DFT, a mis-fitted EMT as the model.

EMT ("DFT") has two basins for interstitial H: octahedral (the ground state) and tetrahedral (~1 eV up).
Unperturbed and the +-10/20 % bond distortions start at the tetrahedral site; only the +-60 % starts
start at the octahedral one. The model at round 0 is EMT with H's eta2 doubled: its octahedral site is
unstable, so every start relaxes to the tetrahedral basin and the protect policy's exploration starts
(+-20 %) do not reach the ground state either. DFT minima at the tetrahedral site are enough for the
fit (H's E0 and n0) to make the octahedral site stable again, which only a learning loop can use.
"""

import json
from pathlib import Path

import numpy as np

OCT, TET = np.array([0.25, 0.0, 0.0]), np.array([0.125, 0.125, 0.125])
TET_STARTS = ("Unperturbed", "Bond_Distortion_-20.0%", "Bond_Distortion_-10.0%", "Bond_Distortion_10.0%",
              "Bond_Distortion_20.0%")  # fmt: skip
OCT_STARTS = ("Bond_Distortion_-60.0%", "Bond_Distortion_60.0%")
DEFECT = "H_i_Cu_0"


def write_h_search(top: Path) -> Path:
    """Write the ShakeNBreak-style tree of the 7 starts (POSCARs + distortion_metadata.json)."""
    from ase.build import bulk
    from ase.io import write

    host = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
    defect = top / DEFECT
    for seed, folder in enumerate(TET_STARTS + OCT_STARTS):
        atoms = host.copy()
        atoms.append("H")
        atoms.positions[-1] = atoms.cell.cartesian_positions(OCT if folder in OCT_STARTS else TET)
        if folder in TET_STARTS and folder != "Unperturbed":
            factor = 1 + float(folder.split("_")[-1].rstrip("%")) / 100
            for i in np.argsort(atoms.get_distances(32, range(32), mic=True))[:4]:
                atoms.set_distance(
                    32, int(i), atoms.get_distance(32, int(i), mic=True) * factor, fix=1, mic=True
                )
        if folder != "Unperturbed":
            atoms.rattle(0.03, seed=seed)
        (defect / folder).mkdir(parents=True, exist_ok=True)
        write(defect / folder / "POSCAR", atoms, format="vasp", direct=True, sort=False)
    metadata = {
        "defects": {
            "H_i_Cu": {
                "unique_site": TET.tolist(),
                "defect_site_index": 32,
                "charges": {"0": {"num_nearest_neighbours": 4, "distorted_atoms": []}},
            }
        }
    }
    (defect / "distortion_metadata.json").write_text(json.dumps(metadata))
    return top


def write_wrong_model(path: Path) -> Path:
    """The round-0 model: EMT with H's eta2 doubled (its octahedral site is not a minimum)."""
    from ase.calculators.emt import parameters

    from snb_ml.loop.surrogate import write_model

    values = list(parameters["H"])
    values[3] *= 2.0
    write_model(path, {"H": values}, {"note": "EMT with H eta2 x 2"})
    return path
