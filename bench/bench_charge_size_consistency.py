"""Size consistency of charge-aware MACE designs: E(+1) - E(0) of one defect in growing supercells.

Embeds the same Cd vacancy of CdTe (tests/data/CdTe_tree, zinc blende, a = 6.54 Å) in 63-, 127-,
255- and 511-atom cells built from the 64-atom bulk cell repeated 1x1x1, 2x1x1, 2x2x1 and 2x2x2,
with the vacancy always at the same site, so the local environment is identical and only bulk is
added. For each charge mode (``site``, ``global``, ``intensive``) a tiny random ``ScaleShiftMACE``
(float64, 8 channels, max_L 0, r_max 5 Å, 2 interactions; random, not zero-initialised, embedding
weights) gives E(+1) - E(0) for the same geometry.

A size-consistent design gives the same number in every cell; ``global`` grows in proportion to N
(every atom feels the total charge). Measured here (seed 3, 1 thread, ~10 s; E(+1) - E(0) in eV)::

    mode          63 atoms   127 atoms   255 atoms   511 atoms   max |change| meV
    site         -0.064091   -0.064091   -0.064091   -0.064091            1.9e-10
    global       -1.750418   -3.539780   -7.118505  -14.275955            1.25e4
    intensive    -0.030344   -0.030380   -0.030397   -0.030406            0.061

``site`` is constant to 1e-10 meV (the 4 marked Te neighbours and everything within the receptive
field of them are the same in every cell); ``global`` doubles with the cell; ``intensive`` drifts
slightly (second order in q / N).

The last rows add the explicit charge terms of a trained model (:mod:`snb_ml.models.charge_reference`,
here ``E_ref = -3 eV`` and ε = 10.4) to the ``site`` model: ``q · E_ref`` is the same in every cell and
the point-charge image term ``-E_pc`` falls as 1/L (the 2x2x2 cell has half the 1x1x1 value; the
elongated 2x1x1 and 2x2x1 cells lie between), as the image interaction of a real supercell does. The
learned part (total minus explicit) keeps the ``site`` guarantee.

Run: ``python bench/bench_charge_size_consistency.py [--seed N] [--r-max R] [--interactions K]``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

TREE = Path(__file__).parents[1] / "tests" / "data" / "CdTe_tree"
REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2))


def main() -> None:
    """Print E(+1) - E(0) per cell size and charge mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--r-max", type=float, default=5.0)
    parser.add_argument("--interactions", type=int, default=2)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    from ase.io import read

    from snb_ml.models import CHARGE_MODES, build_charge_aware_mace
    from snb_ml.models.diagnostics import charge_energy_differences, vacancy_supercell

    torch.set_num_threads(1)
    from mace.calculators import MACECalculator

    bulk = read(TREE / "CdTe_bulk_POSCAR")
    site = np.array([0.0, 0.25, 0.25]) @ bulk.cell.array  # v_Cd unique_site of distortion_metadata.json
    cells = [vacancy_supercell(bulk, site, repeat) for repeat in REPEATS]
    sizes = [len(cell) for cell in cells]
    print(f"r_max {args.r_max} Å, {args.interactions} interactions, seed {args.seed}; E(+1) - E(0) in eV")
    print(f"{'mode':<10}" + "".join(f"{n:>12d}" for n in sizes) + f"{'max |change| meV':>19}{'s':>6}")
    for mode in CHARGE_MODES:
        start = time.perf_counter()
        model = build_charge_aware_mace(
            [48, 52], mode, r_max=args.r_max, num_interactions=args.interactions, channels=8, seed=args.seed
        )
        calculator = MACECalculator(
            models=model,
            device="cpu",
            default_dtype="float64",
            arrays_keys={"defect_charge": "defect_charge", "charge_per_atom": "charge_per_atom"},
        )
        differences = charge_energy_differences(calculator, cells, site, mode)
        change = 1000 * (max(differences) - min(differences))
        print(
            f"{mode:<10}"
            + "".join(f"{d:>12.6f}" for d in differences)
            + f"{change:>19.3g}{time.perf_counter() - start:>6.1f}"
        )
    from snb_ml.models.charge_reference import (
        ChargeReference,
        attach_reference,
        dielectric_tensor,
        mace_calculator_class,
    )

    start = time.perf_counter()
    model = build_charge_aware_mace(
        [48, 52], "site", r_max=args.r_max, num_interactions=args.interactions, channels=8, seed=args.seed
    )
    reference = ChargeReference({"Default": -3.0}, dielectric_tensor(10.4).tolist(), {})
    calculator = mace_calculator_class(attach_reference(model, reference))(
        models=model, device="cpu", default_dtype="float64", arrays_keys={"defect_charge": "defect_charge"}
    )
    totals = charge_energy_differences(calculator, cells, site, "site")
    explicit = [reference.energy(cell.cell, 1) for cell in cells]
    learned = [t - e for t, e in zip(totals, explicit, strict=True)]
    seconds = time.perf_counter() - start
    for label, values in (("site+expl", totals), ("  explicit", explicit), ("  learned", learned)):
        change = 1000 * (max(values) - min(values))
        print(f"{label:<10}" + "".join(f"{d:>12.6f}" for d in values) + f"{change:>19.3g}{seconds:>6.1f}")


if __name__ == "__main__":
    main()
