"""Regenerate the figures of the documentation (``docs/figures/*.png``) from the repository's example data.

Every figure is made by snb_ml's own commands and plotting functions, from data bundled in this
repository, so anyone can redo them from a fresh clone:

.. code-block:: bash

    python docs/make_figures.py --work /tmp/snb_ml_figures          # all figures
    python docs/make_figures.py --work /tmp/snb_ml_figures thermo   # only some

``--work`` keeps the intermediate results (ML trees, models); a rerun with the same folder reuses
finished relaxations. Cost on a 2-core CPU with one torch thread: ``thermo`` a few seconds,
``selection`` (CHGNet, 6 relaxations of 64-atom cells) and ``parity`` (a tiny MACE model) about a
minute each, ``recall`` (CHGNet, the 26 starts of the published V_Cd0 search) about 3 CPU minutes.
The PNGs are written at a modest resolution so that the committed files stay small.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
FIGURES = DOCS / "figures"
THERMO_DATA = REPO / "examples" / "doped_thermo" / "data"
RECALL_SEARCH = REPO / "examples" / "dft_searches" / "CdTe_vac_1_Cd_0"
MGO_TREE = REPO / "tests" / "data" / "vasp" / "MgO_tree"
DPI = 80


def _cli(*args: object) -> None:
    """Run ``snb-ml ARGS`` in this process."""
    from snb_ml.cli import main

    main([str(a) for a in args], standalone_mode=False)


def _shrink(source: Path, target: Path, width_px: int = 640) -> None:
    """Copy a PNG written by snb_ml into ``docs/figures``, resampled to at most ``width_px`` wide."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = mpimg.imread(source)
    height, width = image.shape[:2]
    if width <= width_px:
        shutil.copyfile(source, target)
        return
    scale = width_px / width
    figure = Figure(figsize=(width_px / 100, height * scale / 100), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(image, interpolation="antialiased")
    axes.axis("off")
    figure.savefig(target, dpi=100, metadata={"Software": None})


def _save(figure, name: str) -> Path:
    path = FIGURES / name
    figure.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def thermo_figures(work: Path) -> list[Path]:
    """g_f(T) of V_Cd^-2 and V_Cd concentrations vs T on doped's published CdTe data (CHGNet ΔF_vib)."""
    import numpy as np
    from monty.serialization import loadfn

    from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics
    from snb_ml.thermo.plots import plot_concentrations_vs_T, plot_formation_free_energy_vs_T
    from snb_ml.thermo.terms import vibrational_term_from_json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thermo = loadfn(THERMO_DATA / "CdTe_thermo_wout_meta.json.gz")
        thermo.bulk_dos = loadfn(THERMO_DATA / "CdTe_prim_k101010_fermi_dos.json.gz")
        terms = {
            f"v_Cd_{q}": {"vib": vibrational_term_from_json(THERMO_DATA / f"v_Cd_{q}_fvib.json")}
            for q in (0, -1, -2)
        }
        ft = FiniteTemperatureThermodynamics.from_thermodynamics(thermo, terms=terms)
        g_f = plot_formation_free_energy_vs_T(
            ft, "v_Cd_-2", np.arange(300, 1201, 50), fermi_level=0.5, limit="CdTe-Te"
        )
        g_f.set_size_inches(5, 3.6)
        conc = plot_concentrations_vs_T(
            ft, np.arange(500, 1101, 100), quenched_temperature=300, limit="CdTe-Te"
        )
        conc.set_size_inches(5.5, 4.2)
        # Sixteen lines: the legend goes beside the axes rather than over the curves.
        conc.axes[0].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return [_save(g_f, "g_f_vs_T_v_Cd.png"), _save(conc, "concentrations_vs_T_CdTe.png")]


def selection_figure(work: Path) -> list[Path]:
    """Energy vs distortion of Te_Cd0 in CdTe (CHGNet), coloured by basin, representatives marked."""
    from pymatgen.core import Lattice, Structure
    from shakenbreak.input import Distortions

    import snb_ml
    from snb_ml.minima.selection import select_tree

    tree = work / "selection" / "CdTe"
    if not tree.is_dir():
        bulk = Structure.from_spacegroup("F-43m", Lattice.cubic(6.54), ["Cd", "Te"], [[0, 0, 0], [0.25] * 3])
        bulk.make_supercell(2)
        antisite = bulk.copy()
        antisite.replace(0, "Te")
        oxidation = {"Cd": +2, "Te": -2}
        entries = Distortions.from_structures([antisite], bulk=bulk, oxidation_states=oxidation, padding=0)
        neutral = {
            "Te_Cd": [e for group in entries.defects_dict.values() for e in group if e.charge_state == 0]
        }
        distortions = Distortions(
            neutral, oxidation_states=oxidation, bond_distortions=[-0.4, -0.2, 0.2, 0.3, 0.6]
        )
        tree.mkdir(parents=True)
        distortions.write_vasp_files(output_path=str(tree), verbose=False)
    snb_ml.relax_tree(tree, relaxer="chgnet", progress=False)
    selection = select_tree(tree / "ml_tree")
    target = FIGURES / "selection_Te_Cd_0.png"
    _shrink(tree / "ml_tree" / "Te_Cd_0" / "snb_ml_selection.png", target)
    print(selection.table())
    return [target]


def recall_figure(work: Path) -> list[Path]:
    """ML vs DFT energies of the 26 starts of the published V_Cd0 search (``snb-ml recall``, CHGNet)."""
    output = work / "recall_vcd"
    _cli("recall", "-p", RECALL_SEARCH, "-o", output, "--threads", "1")
    target = FIGURES / "recall_v_Cd_0.png"
    _shrink(output / "recall_protect.png", target)
    return [target]


def parity_figures(work: Path) -> list[Path]:
    """Parity plots of ``snb-ml evaluate`` for a tiny charge-aware MACE model on trimmed MgO relaxations.

    The same settings as tutorial 04: 7 frames, 40 epochs, 8 channels. The model is far too small to be
    useful; the figure shows what ``snb-ml evaluate`` draws.
    """
    dataset, model_dir, report = (
        work / "parity" / "dataset",
        work / "parity" / "model",
        work / "parity" / "report",
    )
    shutil.rmtree(work / "parity", ignore_errors=True)
    _cli("dataset", MGO_TREE, "-o", dataset, "--split", "frames", "--fractions", "0.34,0.33,0.33",
         "--frames-per-relaxation", "0", "-q")  # fmt: skip
    _cli("train", dataset, "-o", model_dir, "--epochs", 40, "--batch-size", 1, "--lr", 0.01, "--channels", 8,
         "--r-max", 4.0, "--threads", 1, "--dielectric", 8.8963, "--seed", 1, "--quiet")  # fmt: skip
    # The training frames, so that the plot has more than two points (the test split has two).
    _cli("evaluate", model_dir / "defect_model.model", dataset, "--split", "train", "-o", report)
    targets = [FIGURES / "energy_parity_MgO.png", FIGURES / "forces_parity_MgO.png"]
    _shrink(report / "energy_parity.png", targets[0], width_px=420)
    _shrink(report / "forces_parity.png", targets[1], width_px=420)
    return targets


FIGURE_SETS = {
    "thermo": thermo_figures,
    "selection": selection_figure,
    "recall": recall_figure,
    "parity": parity_figures,
}


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sets", nargs="*", help=f"Figure sets, of {', '.join(FIGURE_SETS)} (default: all).")
    parser.add_argument("--work", required=True, type=Path, help="Folder for intermediate results.")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sets) - set(FIGURE_SETS))
    if unknown:
        parser.error(f"unknown figure set(s) {unknown}; choose from {', '.join(FIGURE_SETS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    FIGURES.mkdir(exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.sets or list(FIGURE_SETS):
        start = time.perf_counter()
        written = FIGURE_SETS[name](args.work.resolve())
        sizes = ", ".join(f"{p.name} ({p.stat().st_size / 1e3:.0f} kB)" for p in written)
        print(f"{name}: {sizes}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
