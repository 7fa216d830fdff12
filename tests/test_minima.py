"""SOAP minima selection on ML trees written by the real runner (EMT via the `ase` backend)."""

import itertools
import json
import shutil
import warnings

import numpy as np
import pytest

from snb_ml.errors import InputError
from snb_ml.minima import (
    SELECTION_FILE,
    SELECTION_PLOT,
    DefectFingerprinter,
    cluster_minima,
    cosine_distance,
    identify_defect_site,
    select_defect,
    select_tree,
)
from snb_ml.minima.fingerprints import defect_centre
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings

OCT, TET = np.array([0.25, 0.0, 0.0]), np.array([0.125, 0.125, 0.125])


def emt(**relax):
    return RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings(**relax)
    )


def write_h_tree(top, starts=("Unperturbed", "Bond_Distortion_-30.0%", "Bond_Distortion_30.0%", "Rattled")):
    """H_i in 32-atom Cu: two EMT basins by construction, octahedral (lower) and tetrahedral (~1 eV up).

    Unperturbed and the bond distortions start at the octahedral site; Rattled and
    Bond_Distortion_-60.0% start at the tetrahedral site.
    """
    from ase.build import bulk
    from ase.io import write

    a = 3.59
    host = bulk("Cu", "fcc", a=a, cubic=True).repeat(2)
    defect = top / "H_i_Cu_0"
    for folder in starts:
        atoms = host.copy()
        atoms.append("H")
        tetrahedral = folder in ("Rattled", "Bond_Distortion_-60.0%")
        atoms.positions[-1] = atoms.cell.cartesian_positions(TET if tetrahedral else OCT)
        if folder.startswith("Bond_Distortion") and not tetrahedral:
            factor = 1 + float(folder.split("_")[-1].rstrip("%")) / 100
            nearest = np.argsort(atoms.get_distances(32, range(32), mic=True))[:6]
            for i in nearest:
                atoms.set_distance(32, int(i), a / 2 * factor, fix=1, mic=True)
        if folder != "Unperturbed":
            atoms.rattle(0.05, seed=len(folder))
        (defect / folder).mkdir(parents=True, exist_ok=True)
        write(defect / folder / "POSCAR", atoms, format="vasp", direct=True, sort=False)
    metadata = {
        "defects": {
            "H_i_Cu": {
                "unique_site": OCT.tolist(),
                "defect_site_index": 32,
                "charges": {"0": {"num_nearest_neighbours": 2, "distorted_atoms": []}},
            }
        }
    }
    (defect / "distortion_metadata.json").write_text(json.dumps(metadata))
    return top


@pytest.fixture(scope="module")
def h_ml(tmp_path_factory):
    top = write_h_tree(tmp_path_factory.mktemp("h") / "H_tree")
    report = run_tree(top, emt())
    assert not report.failed
    return top


@pytest.fixture(scope="module")
def cu_ml(tmp_path_factory):
    from conftest import DATA

    top = shutil.copytree(DATA / "Cu_tree", tmp_path_factory.mktemp("cu") / "Cu_tree")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EMT has no charge embedding (v_Cu_-1)
        report = run_tree(top, emt())
    assert not report.failed
    return top


@pytest.fixture
def h_copy(h_ml, tmp_path):
    """A private copy of the H_i trees, its provenance pointing at the copied input folder."""
    top = shutil.copytree(h_ml, tmp_path / "H_tree")
    path = top / "ml_tree" / "H_i_Cu_0" / "snb_ml_provenance.json"
    document = json.loads(path.read_text())
    document["input_directory"] = str(top / "H_i_Cu_0")
    path.write_text(json.dumps(document))
    return top


def provenance(defect_dir):
    return json.loads((defect_dir / "snb_ml_provenance.json").read_text())["distortions"]


def test_two_basins_separated_and_higher_one_kept(h_copy):
    ml = h_copy / "ml_tree" / "H_i_Cu_0"
    selection = select_defect(ml, policy="lean")
    assert len(selection.clusters) == 2
    oct_cluster, tet_cluster = selection.clusters
    assert set(oct_cluster.members) == {"Unperturbed", "Bond_Distortion_-30.0%", "Bond_Distortion_30.0%"}
    assert tet_cluster.members == ["Rattled"]
    # ~1 eV ABOVE Unperturbed in ML energy, yet a distinct basin: it is selected.
    assert tet_cluster.energy_vs_unperturbed > 0.5
    assert "Rattled" in selection.selected and len(selection.selected) == 2
    assert tet_cluster.distance_to_unperturbed > selection.threshold
    assert oct_cluster.distance_to_unperturbed < selection.threshold
    assert selection.headline() == "DFT relaxations needed: 2 of 4 (50% saved)"
    assert selection.excluded == {}


def test_same_minimum_from_different_distortions_merges(cu_ml):
    ml = cu_ml / "ml_tree" / "v_Cu_0"
    selection = select_defect(ml, policy="lean")
    assert len(selection.clusters) == 1
    assert len(selection.clusters[0].members) == 6
    assert selection.headline() == "DFT relaxations needed: 1 of 6 (83% saved)"


def test_representative_is_lowest_energy(cu_ml, h_copy):
    for ml in (cu_ml / "ml_tree" / "v_Cu_0", h_copy / "ml_tree" / "H_i_Cu_0"):
        records = provenance(ml)
        for cluster in select_defect(ml, policy="lean", write=False).clusters:
            energies = {m: records[m]["energy"] for m in cluster.members}
            assert cluster.representative == min(energies, key=energies.get)
            assert cluster.members[0] == cluster.representative


def test_tree_totals_and_outputs(cu_ml):
    tree = select_tree(cu_ml / "ml_tree", write=True, policy="lean")
    assert not tree.failed and set(tree.defects) == {"v_Cu_0", "v_Cu_-1"}
    assert tree.headline() == "DFT relaxations needed: 2 of 8 (75% saved)"
    assert tree.headline() in tree.table()
    for name in tree.defects:
        document = json.loads((cu_ml / "ml_tree" / name / SELECTION_FILE).read_text())
        assert set(document) >= {"defect", "threshold", "window", "parameters", "clusters", "selected"}
        assert set(document) >= {"excluded", "distances"}
        assert document["parameters"]["sigma"] == 0.3 and document["defect"] == name
        assert len(document["distances"]["matrix"]) == len(document["distances"]["labels"])
        assert (cu_ml / "ml_tree" / name / SELECTION_PLOT).stat().st_size > 1000


def test_json_is_deterministic(h_copy):
    ml = h_copy / "ml_tree" / "H_i_Cu_0"
    select_defect(ml, policy="lean", window=5.0)
    first = (ml / SELECTION_FILE).read_bytes()
    select_defect(ml, policy="lean", window=5.0)
    assert (ml / SELECTION_FILE).read_bytes() == first
    document = json.loads(first)
    assert document["clusters"][0]["representative"] == document["selected"][0]
    assert document["distances"]["labels"][0] == "Unperturbed"


def test_cluster_order_is_independent_of_input_order():
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 0.01, (4, 2)), rng.normal(1, 0.01, (3, 2))])
    labels = [f"m{i}" for i in range(7)]
    energies = [0.3, 0.1, 0.2, 0.1, -0.5, 0.4, 0.0]
    matrix = np.linalg.norm(points[:, None] - points[None], axis=-1)
    reference = cluster_minima(labels, energies, matrix, threshold=0.2)
    assert [c.members for c in reference] == [("m4", "m6", "m5"), ("m1", "m3", "m2", "m0")]
    for order in itertools.islice(itertools.permutations(range(7)), 0, 5040, 97):
        order = list(order)
        clusters = cluster_minima(
            [labels[i] for i in order], [energies[i] for i in order], matrix[np.ix_(order, order)], 0.2
        )
        assert clusters == reference


def test_window_reports_what_it_excluded(h_copy):
    ml = h_copy / "ml_tree" / "H_i_Cu_0"
    selection = select_defect(ml, policy="lean", window=0.3)
    assert selection.selected == [selection.clusters[0].representative]
    assert [c.members for c in selection.window_excluded] == [["Rattled"]]
    assert "energy window" in selection.excluded["Rattled"]
    assert any("energy window left out 1" in note for note in selection.notes)
    document = json.loads((ml / SELECTION_FILE).read_text())
    assert document["window"] == 0.3 and document["clusters"][1]["in_window"] is False
    assert "Rattled" in document["excluded"] and document["selected"] == selection.selected
    assert selection.headline() == "DFT relaxations needed: 1 of 4 (75% saved)"


def test_unconverged_and_high_energy_excluded_and_reported(tmp_path):
    top = write_h_tree(tmp_path / "H_tree", starts=("Unperturbed", "Bond_Distortion_30.0%", "Rattled"))
    run_tree(top, emt(high_energy_threshold=0.5))  # the tetrahedral minimum (+1 eV) is high_energy
    write_h_tree(top, starts=("Bond_Distortion_-30.0%",))
    # only the new distortion runs, and stops unconverged; _High_Energy is judged on every run, with
    # this run's threshold
    run_tree(top, emt(steps=2, high_energy_threshold=0.5))
    ml = top / "ml_tree" / "H_i_Cu_0"
    selection = select_defect(ml, policy="lean")
    assert selection.excluded["Rattled"].startswith("high_energy")
    assert selection.excluded["Bond_Distortion_-30.0%"].startswith("unconverged")
    assert selection.labels == ["Unperturbed", "Bond_Distortion_30.0%"]
    assert selection.headline() == "DFT relaxations needed: 1 of 4 (75% saved)"
    assert "high_energy" in selection.table()


def test_incomplete_results_name_the_distortions(h_copy):
    write_h_tree(h_copy, starts=("Bond_Distortion_-60.0%",))  # in the input tree, never relaxed
    ml = h_copy / "ml_tree" / "H_i_Cu_0"
    (ml / "Bond_Distortion_30.0%" / "CONTCAR").unlink()
    with pytest.raises(InputError, match=r"no ML result for Bond_Distortion_-60\.0%, Bond_Distortion_30\.0%"):
        select_defect(ml, policy="lean")
    selection = select_defect(ml, policy="lean", allow_incomplete=True)
    assert selection.excluded["Bond_Distortion_-60.0%"].startswith("no ML result")
    assert selection.n_distortions == 5


def test_all_unconverged_is_an_error(tmp_path):
    top = write_h_tree(tmp_path / "H_tree", starts=("Unperturbed", "Rattled"))
    run_tree(top, emt(steps=1, fmax=1e-4))
    with pytest.raises(InputError, match="No relaxation of H_i_Cu_0 converged"):
        select_defect(top / "ml_tree" / "H_i_Cu_0")
    tree = select_tree(top / "ml_tree")
    assert tree.failed and "converged" in tree.errors["H_i_Cu_0"]


def test_missing_ml_tree_and_non_ml_folders(tmp_path, h_copy):
    with pytest.raises(InputError, match="does not exist"):
        select_tree(tmp_path / "nowhere")
    with pytest.raises(InputError, match="not a defect folder of an ML tree"):
        select_defect(h_copy / "H_i_Cu_0")  # the ShakeNBreak input folder
    with pytest.raises(InputError, match="holds no defect folders"):
        select_tree(h_copy)
    with pytest.raises(InputError, match="not found in the ML tree"):
        select_tree(h_copy / "ml_tree", defects=["v_X_0"])


def test_defect_site_not_identifiable(h_copy, tmp_path):
    ml = h_copy / "ml_tree" / "H_i_Cu_0"
    (ml / "distortion_metadata.json").unlink()
    with pytest.raises(InputError, match="Cannot identify the defect site"):
        select_defect(ml, policy="lean")
    bare = tmp_path / "ml" / "H_i_Cu_0"
    bare.mkdir(parents=True)
    shutil.copy(h_copy / "H_i_Cu_0" / "distortion_metadata.json", bare)
    with pytest.raises(InputError, match="no Unperturbed structure"):
        identify_defect_site(bare)


def test_defect_atom_followed_even_with_wrong_index(h_copy):
    ml = h_copy / "ml_tree" / "H_i_Cu_0"
    metadata = json.loads((ml / "distortion_metadata.json").read_text())
    metadata["defects"]["H_i_Cu"]["defect_site_index"] = 5  # a Cu far from the site
    (ml / "distortion_metadata.json").write_text(json.dumps(metadata))
    site = identify_defect_site(ml)
    assert site.atom_index == 32 and len(site.shell) == 6
    selection = select_defect(ml, policy="lean", include_neighbours=True, write=False)
    assert selection.parameters["include_neighbours"] is True
    assert all("Rattled" not in c.members or c.members == ["Rattled"] for c in selection.clusters)


def test_vacancy_that_hops_to_an_equivalent_site_keeps_its_fingerprint(cu_ml):
    from ase.io import read

    ml = cu_ml / "ml_tree" / "v_Cu_0"
    site = identify_defect_site(ml)
    unperturbed = read(ml / "Unperturbed" / "POSCAR")
    hopped = unperturbed.copy()
    neighbour = site.shell[0]
    hopped.positions[neighbour] = hopped.cell.cartesian_positions(site.frac_coords)
    assert np.allclose(defect_centre(hopped, site), unperturbed.positions[neighbour])
    fingerprint = DefectFingerprinter(["Cu"], site)
    assert cosine_distance(fingerprint(hopped), fingerprint(unperturbed)) < 1e-8
    fixed = DefectFingerprinter(["Cu"], site, recentre_vacancy=False)
    assert cosine_distance(fixed(hopped), fixed(unperturbed)) < 1e-8
