"""Symmetry-unique neighbour-pair distortions: CdTe and Cu vacancies, EMT relaxation, ShakeNBreak reading."""

import json
import math
import warnings

import numpy as np
import pytest
from conftest import DATA

from snb_ml.errors import InputError, OutputError
from snb_ml.pairs import (
    defect_neighbours,
    pair_distortions,
    pair_distortions_from_folder,
    pair_folder_name,
    unique_pairs,
    write_pair_tree,
)

A_CDTE = 6.54
TE_DISTANCE = A_CDTE * math.sqrt(3) / 4


@pytest.fixture(scope="module")
def cd_vacancy():
    """64-atom zinc-blende CdTe (a = 6.54 Å) without one Cd, and the vacancy's fractional coordinates."""
    from pymatgen.core import Lattice, Structure

    cell = Structure.from_spacegroup("F-43m", Lattice.cubic(A_CDTE), ["Cd", "Te"], [[0, 0, 0], [0.25] * 3])
    supercell = cell * [2, 2, 2]
    assert len(supercell) == 64
    index = next(i for i, site in enumerate(supercell) if site.species_string == "Cd")
    frac_coords = supercell[index].frac_coords.copy()
    supercell.remove_sites([index])
    return supercell, frac_coords


def centre_distance(structure, frac_coords, index):
    return structure.lattice.get_distance_and_image(frac_coords, structure[index].frac_coords)[0]


def test_cdte_vacancy_has_one_unique_pair(cd_vacancy):
    structure, frac_coords = cd_vacancy
    neighbours = defect_neighbours(structure, frac_coords=frac_coords)
    assert [e for _, _, e in neighbours] == ["Te"] * 4
    assert np.allclose([d for d, _, _ in neighbours], TE_DISTANCE)
    [pair] = unique_pairs(structure, frac_coords=frac_coords)  # Td: all 6 Te-Te pairs equivalent
    assert pair.multiplicity == 6 and pair.elements == ("Te", "Te")
    assert pair.distance == pytest.approx(A_CDTE / math.sqrt(2), abs=1e-3)


def test_mixed_environment_splits_pair_classes(cd_vacancy):
    structure, frac_coords = cd_vacancy
    mixed = structure.copy()
    first = defect_neighbours(structure, frac_coords=frac_coords)[0][1]
    mixed.replace(first, "Se")
    pairs = unique_pairs(mixed, frac_coords=frac_coords)  # C3v: Se-Te (3) and Te-Te (3)
    assert sorted((p.elements, p.multiplicity) for p in pairs) == [(("Se", "Te"), 3), (("Te", "Te"), 3)]
    # a substitution on the site (site_index): Te_Cd antisite, again 4 Te neighbours under Td
    antisite = structure.copy()
    antisite.append("Te", frac_coords)
    [pair] = unique_pairs(antisite, site_index=len(antisite) - 1)
    assert pair.multiplicity == 6


def test_pair_bond_lengths_dimer_and_rattle(cd_vacancy):
    structure, frac_coords = cd_vacancy
    result = pair_distortions(structure, frac_coords=frac_coords, bond_distortions=(-0.4, -0.2))
    [pair] = result["pairs"]
    i, j = pair["indices"]
    assert set(result["distortions"]) == {
        pair_folder_name(pair["label"], -0.4),
        pair_folder_name(pair["label"], -0.2),
        pair_folder_name(pair["label"], "Dimer"),
    }
    for fraction in (-0.4, -0.2):
        distorted = result["distortions"][f"Bond_Distortion_{fraction * 100:.1f}%_from_{pair['label']}"]
        for index in (i, j):
            assert centre_distance(distorted, frac_coords, index) == pytest.approx(
                (1 + fraction) * TE_DISTANCE, abs=1e-6
            )
        others = [k for k in range(len(structure)) if k not in (i, j)]
        shifts = np.linalg.norm(distorted.cart_coords[others] - structure.cart_coords[others], axis=1)
        assert shifts.max() > 0.05  # the rest is rattled
    dimer = result["distortions"][f"Dimer_from_{pair['label']}"]
    assert dimer.get_distance(i, j) == pytest.approx(2.0, abs=1e-6)
    assert np.allclose(dimer.cart_coords[[i, j]].mean(axis=0), structure.cart_coords[[i, j]].mean(axis=0))
    again = pair_distortions(structure, frac_coords=frac_coords, bond_distortions=(-0.4, -0.2))
    assert all(
        np.array_equal(s.cart_coords, again["distortions"][name].cart_coords)
        for name, s in result["distortions"].items()
    )
    with pytest.raises(InputError, match="Give the defect site"):
        unique_pairs(structure)


def test_cdte_folder_names_are_read_by_shakenbreak():
    from shakenbreak.analysis import _format_distortion_names, _get_distortion_filename

    result = pair_distortions_from_folder(DATA / "CdTe_tree" / "v_Cd_0")
    assert [p["label"] for p in result["pairs"]] == [
        "pair35-39"
    ]  # ShakeNBreak's own pair is the representative
    assert result["distortion_parameters"]["stdev"] == pytest.approx(0.2831903070375112)
    assert len(result["distortions"]) == 6
    for name in result["distortions"]:
        key = _format_distortion_names(name)
        assert key != "Label_not_recognized" and _get_distortion_filename(key) == name


def test_cu_vacancy_pair_tree_relaxes_and_shakenbreak_reads_it(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from shakenbreak.analysis import compare_structures, get_energies, get_structures
    from shakenbreak.plotting import plot_defect

    from snb_ml.runner import run_tree
    from snb_ml.settings import RunSettings

    result = pair_distortions_from_folder(DATA / "Cu_tree" / "v_Cu_0", bond_distortions=(-0.4,))
    a = 3.61  # fcc: 12 neighbours, pairs at a/sqrt(2), a, a*sqrt(3/2), a*sqrt(2) under Oh
    classes = [(p["distance"], p["multiplicity"]) for p in result["pairs"]]
    expected = [a / math.sqrt(2), a, a * math.sqrt(1.5), a * math.sqrt(2)]
    assert [m for _, m in classes] == [24, 12, 24, 6]
    assert np.allclose([d for d, _ in classes], expected, atol=1e-3)

    directory = write_pair_tree(result, tmp_path / "pairs", "v_Cu_0")
    assert write_pair_tree(result, tmp_path / "pairs", "v_Cu_0") == directory  # same content: allowed
    metadata = json.loads((directory / "distortion_metadata.json").read_text())
    assert len(metadata["snb_ml_pairs"]["pairs"]) == 4
    assert metadata["defects"]["v_Cu"]["charges"]["0"]["num_nearest_neighbours"] == 2
    other = pair_distortions_from_folder(DATA / "Cu_tree" / "v_Cu_0", bond_distortions=(-0.3,))
    with pytest.raises(OutputError, match="does not hold these pair distortions"):
        write_pair_tree(other, tmp_path / "pairs", "v_Cu_0")
    with pytest.raises(InputError, match="does not end in its charge"):
        write_pair_tree(result, tmp_path / "pairs", "v_Cu")

    settings = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False)
    report = run_tree(tmp_path / "pairs", settings)
    assert not report.failed and len(report.defects[0].records) == 9
    ml = str(report.ml_tree)
    energies = get_energies("v_Cu_0", output_path=ml, verbose=False)
    assert len(energies["distortions"]) == 8 and "Unperturbed" in energies
    structures = get_structures("v_Cu_0", output_path=ml)
    assert "-40.0%_from_pair0-1" in structures and "Dimer_from_pair0-12" in structures
    assert len(compare_structures(structures, energies, verbose=False)) == 9
    figure = plot_defect("v_Cu_0", energies, output_path=ml, save_plot=False)
    # ShakeNBreak plots every ML energy of the pair tree (one point per start, Unperturbed at 0).
    plotted = sorted(float(y) for ax in figure.axes for c in ax.collections for _, y in c.get_offsets())
    assert plotted == pytest.approx(sorted([*energies["distortions"].values(), energies["Unperturbed"]]))


def test_substitution_site_found_in_snb_generated_tree(tmp_path):
    """doped's defect_site_index is not the POSCAR's (sorted) index: the site is found by coordinates."""
    from pymatgen.core import Lattice, Structure
    from shakenbreak.input import Distortions

    bulk = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]) * [2, 2, 2]
    defect = bulk.copy()
    defect.replace(5, "Ag")
    with warnings.catch_warnings():  # POTCARs not set up, oxidation states guessed
        warnings.simplefilter("ignore")
        Distortions.from_structures([(defect, 0)], bulk=bulk, bond_distortions=[-0.3]).write_vasp_files(
            output_path=str(tmp_path), verbose=False
        )
    [folder] = [p for p in tmp_path.iterdir() if p.name.endswith("_0")]
    result = pair_distortions_from_folder(folder, bond_distortions=(-0.3,), dimer_distance=None)
    unperturbed = result["Unperturbed"]
    ag = result["defect_site"]["site_index"]
    assert unperturbed[ag].species_string == "Ag"
    assert [len(result["neighbours"]), len(result["pairs"]), len(result["distortions"])] == [12, 4, 4]
    for name, structure in result["distortions"].items():
        i, j = result["pairs"][[p["label"] for p in result["pairs"]].index(name.split("_from_")[1])][
            "indices"
        ]
        assert np.allclose(structure[ag].coords, unperturbed[ag].coords)  # the defect itself stays put
        assert structure.get_distance(ag, i) == pytest.approx(0.7 * 3.61 / math.sqrt(2), abs=1e-6)
