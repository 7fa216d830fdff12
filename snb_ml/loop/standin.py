"""A local stand-in for the DFT step: relax the handed-off folders with any ASE calculator.

It writes what a finished ShakeNBreak DFT search keeps and what ``snb-ml dataset`` harvests: each
folder's ``CONTCAR`` and the energies in ``{defect}/{defect}.yaml`` (ShakeNBreak's format). A folder
that already holds DFT output (OUTCAR, CONTCAR, ...) or a yaml entry is never touched: real DFT results
are never overwritten. Used by ``snb-ml loop round --dft module:Class`` and by the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snb_ml.data.minima import energies_yaml, yaml_key
from snb_ml.errors import OutputError
from snb_ml.relaxers.ase_backend import load_ase_calculator
from snb_ml.relaxers.base import CalculatorRequest
from snb_ml.safe_write import atomic_path, write_text
from snb_ml.tree.layout import dft_outputs


def _yaml_document(defect_dir: Path) -> dict[str, Any]:
    import yaml

    path = energies_yaml(defect_dir)
    if not path.is_file():
        return {"distortions": {}}
    document = yaml.safe_load(path.read_text()) or {}
    document.setdefault("distortions", {})
    return document


def relax_folders(
    dft_dir: Path,
    folders: dict[str, list[str]],
    calculator: str,
    options: dict[str, Any] | None = None,
    fmax: float = 0.01,
    steps: int = 500,
) -> dict[str, dict[str, float]]:
    """Relax the given distortion folders of a DFT tree with an ASE calculator.

    Args:
        dft_dir: The DFT tree (``{defect}/{distortion}/POSCAR``).
        folders: Defect -> distortion folders to relax.
        calculator: ``module:Class`` of an ASE calculator.
        options: Its constructor keyword arguments.
        fmax: Force convergence (eV/Å).
        steps: Most optimizer steps.

    Returns:
        Defect -> {distortion: energy} of what was relaxed now.

    Raises:
        OutputError: A folder already holds DFT output or a yaml energy (nothing is written then).
    """
    import yaml
    from ase.io import read, write
    from ase.optimize import FIRE

    for defect, names in folders.items():
        document = _yaml_document(dft_dir / defect)
        for name in names:
            folder = dft_dir / defect / name
            present = dft_outputs(folder, include_contcar=True)
            key = yaml_key(name)
            if present or (
                key in document["distortions"] or (key == "Unperturbed" and "Unperturbed" in document)
            ):
                raise OutputError(
                    f"{folder} already holds DFT results ({', '.join(present) or 'a yaml energy'}); the DFT "
                    "stand-in never overwrites them. Run the round without --dft to harvest them."
                )
    loaded = load_ase_calculator(CalculatorRequest(model=calculator, options=dict(options or {})))
    done: dict[str, dict[str, float]] = {}
    for defect, names in folders.items():
        energies: dict[str, float] = {}
        for name in names:
            folder = dft_dir / defect / name
            atoms = read(str(folder / "POSCAR"), format="vasp")
            atoms.calc = loaded.calculator
            FIRE(atoms, logfile=None).run(fmax=fmax, steps=steps)
            energies[name] = float(atoms.get_potential_energy())
            with atomic_path(folder / "CONTCAR") as temporary:
                write(str(temporary), atoms, format="vasp", direct=True)
        document = _yaml_document(dft_dir / defect)
        for name, energy in energies.items():
            key = yaml_key(name)
            if key == "Unperturbed":
                document["Unperturbed"] = energy
            else:
                document["distortions"][key] = energy
        write_text(energies_yaml(dft_dir / defect), yaml.safe_dump(document))
        done[defect] = energies
    return done
