"""Charge-aware MACE models: markers, grafting, size consistency, training signal, backend hook."""

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk as ase_bulk
from ase.io import read

from snb_ml.errors import InputError, ModelError
from snb_ml.models import (
    CHARGE_MODES,
    add_readout_heads,
    annotate_atoms,
    build_charge_aware_mace,
    defect_markers,
    detect_charge_mode,
    graft_charge_embedding,
)
from snb_ml.models.diagnostics import charge_energy_differences, vacancy_supercell
from snb_ml.plugins import get_relaxer
from snb_ml.relax import RelaxSettings, relax
from snb_ml.relaxers.base import CalculatorRequest

try:
    from mace_models import build_tiny_mace
except ImportError:  # tests/ imported as a package
    from tests.mace_models import build_tiny_mace

TREE = Path(__file__).parent / "data" / "CdTe_tree"
V_CD_SITE_FRAC = (0.0, 0.25, 0.25)  # distortion_metadata.json: unique_site of v_Cd

pytestmark = [
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"),
    pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def v_cd():
    """The real 63-atom V_Cd cell of the test tree and its Cartesian vacancy site."""
    atoms = read(TREE / "v_Cd_0" / "Unperturbed" / "POSCAR")
    return atoms, np.array(V_CD_SITE_FRAC) @ atoms.cell.array


@pytest.fixture(scope="module")
def blind_path(tmp_path_factory) -> Path:
    return build_tiny_mace(tmp_path_factory.mktemp("charge_models") / "blind.model")


@pytest.fixture(scope="module")
def blind(blind_path):
    import torch

    return torch.load(blind_path, weights_only=False)


def calculator(model, **kwargs):
    from mace.calculators import MACECalculator

    keys = {"defect_charge": "defect_charge", "charge_per_atom": "charge_per_atom"}
    return MACECalculator(models=model, device="cpu", default_dtype="float64", arrays_keys=keys, **kwargs)


def energy_forces(calc, atoms):
    work = atoms.copy()
    work.calc = calc
    return float(work.get_potential_energy()), work.get_forces().copy()


def small_vacancy():
    """7-atom CdTe (a = 6.54 Å) with the Cd at the origin removed; returns (atoms, site)."""
    atoms = ase_bulk("CdTe", "zincblende", a=6.54, cubic=True)
    site = atoms.positions[0].copy()
    del atoms[0]
    return atoms, site


# --- markers and annotation ----------------------------------------------------------------------


def test_markers_cover_the_first_shell(v_cd):
    atoms, site = v_cd
    markers = defect_markers(atoms, site)
    assert markers.shape == (len(atoms),)
    marked = np.flatnonzero(markers)
    assert len(marked) == 4  # the four Te neighbours of the Cd vacancy
    assert set(atoms[marked].get_chemical_symbols()) == {"Te"}
    assert set(np.unique(markers)) == {0.0, 1.0}
    # The same atoms are marked in ShakeNBreak's distortions of this defect: the default radius comes
    # from the bulk-like bond length, which the local distortion hardly changes.
    for folder in ("Bond_Distortion_-30.0%", "Dimer"):
        distorted = read(TREE / "v_Cd_0" / folder / "POSCAR")
        assert np.array_equal(np.flatnonzero(defect_markers(distorted, site)), marked), folder
    # An explicit radius reaches the second (Cd) shell at 4.62 Å.
    assert defect_markers(atoms, site, radius=4.8).sum() == 4 + 12


def test_markers_of_a_substitution_include_the_site_atom():
    atoms = ase_bulk("CdTe", "zincblende", a=6.54, cubic=True).repeat(2)
    markers = defect_markers(atoms, atoms.positions[0])
    assert markers[0] == 1.0 and markers.sum() == 5


def test_markers_and_annotation_reject_bad_input(v_cd):
    atoms, site = v_cd
    with pytest.raises(InputError, match="three"):
        defect_markers(atoms, [0.0, 1.0])
    with pytest.raises(InputError, match="positive"):
        defect_markers(atoms, site, radius=-1.0)
    with pytest.raises(InputError, match="No atom lies within"):
        defect_markers(atoms, site, radius=0.5)
    with pytest.raises(InputError, match="integer"):
        annotate_atoms(atoms.copy(), 0.5, site)
    with pytest.raises(InputError, match="defect site"):
        annotate_atoms(atoms.copy(), 1, None, mode="site")
    neutral = annotate_atoms(atoms.copy(), 0, None, mode="site")  # q = 0 needs no site: zero features
    assert not neutral.arrays["defect_charge"].any()
    with pytest.raises(InputError, match="Unknown charge mode"):
        annotate_atoms(atoms.copy(), 1, site, mode="local")


def test_annotation_per_mode(v_cd):
    atoms, site = v_cd
    site_atoms = annotate_atoms(atoms.copy(), -2, site, mode="site")
    assert site_atoms.info["charge"] == -2 and isinstance(site_atoms.info["charge"], int)
    assert site_atoms.info["defect_site"] == pytest.approx(list(site))
    np.testing.assert_array_equal(site_atoms.arrays["defect_charge"], -2 * defect_markers(atoms, site))
    global_atoms = annotate_atoms(atoms.copy(), 1.0, mode="global")
    assert global_atoms.info["charge"] == 1 and "defect_charge" not in global_atoms.arrays
    intensive = annotate_atoms(atoms.copy(), 1, mode="intensive")
    assert intensive.arrays["charge_per_atom"] == pytest.approx(np.full(len(atoms), 1 / len(atoms)))


# --- grafting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["site", "global"])
def test_graft_reproduces_source_exactly(blind, v_cd, tmp_path, mode):
    import torch

    atoms, site = v_cd
    grafted = graft_charge_embedding(blind, mode=mode, emb_dim=8)
    assert detect_charge_mode(grafted) == mode
    assert next(grafted.parameters()).dtype == torch.float64
    # A normal MACE model file: it loads through the mace backend.
    torch.save(grafted, tmp_path / "grafted.model")
    loaded = get_relaxer("mace").load(CalculatorRequest(model=str(tmp_path / "grafted.model")))
    assert loaded.charge_mode == mode and loaded.charge_aware
    source = calculator(blind)
    worst_e = worst_f = 0.0
    for q in (-2, 0, 1):
        structure = atoms.copy()
        structure.info.update(charge=q, defect_site=list(site))
        loaded.prepare_atoms(structure)
        e0, f0 = energy_forces(source, structure)
        e1, f1 = energy_forces(loaded.calculator, structure)
        worst_e, worst_f = max(worst_e, abs(e1 - e0)), max(worst_f, float(np.abs(f1 - f0).max()))
    assert worst_e < 1e-8 and worst_f < 1e-8, (worst_e, worst_f)


def test_graft_errors(blind, blind_path, tmp_path):
    import torch

    with pytest.raises(ModelError, match="ScaleShiftMACE"):
        graft_charge_embedding(torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match="r_max: model has 5.0, requested 4.0"):
        graft_charge_embedding(blind, require={"r_max": 4.0, "num_interactions": 2})
    assert detect_charge_mode(graft_charge_embedding(blind_path, require={"r_max": 5.0})) == "site"
    charged = build_tiny_mace(tmp_path / "charged.model", charge_mode="global")
    with pytest.raises(ModelError, match="already has an embedding"):
        graft_charge_embedding(charged)
    with pytest.raises(InputError, match="Unknown charge mode"):
        graft_charge_embedding(blind, mode="everywhere")
    with pytest.raises(ModelError, match="does not exist"):
        graft_charge_embedding(tmp_path / "missing.model")


def _batch(model, frames):
    import torch
    from mace import data
    from mace.tools import torch_geometric, torch_tools
    from mace.tools.utils import AtomicNumberTable

    keyspec = data.KeySpecification(
        info_keys={"total_charge": "charge"}, arrays_keys={"defect_charge": "defect_charge"}
    )
    table = AtomicNumberTable([int(z) for z in model.atomic_numbers])
    with torch_tools.default_dtype(torch.float64):  # the graphs in the model's precision
        graphs = [
            data.AtomicData.from_config(
                data.config_from_atoms(frame, key_specification=keyspec),
                z_table=table,
                cutoff=float(model.r_max),
            )
            for frame in frames
        ]
    return next(iter(torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)))


def _train(model, frames, targets, steps=15):
    """A few Adam steps on energies; returns the energies before and after."""
    import torch

    batch = _batch(model, frames).to_dict()
    target = torch.tensor(targets, dtype=torch.float64)
    before = model(batch, compute_force=False)["energy"].detach().clone()
    parameters = list(model.parameters())
    for parameter in parameters:  # MACECalculator freezes the models it wraps
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((model(batch, training=True, compute_force=False)["energy"] - target) ** 2).sum()
        loss.backward()
        optimizer.step()
    model.eval()
    return before, model(batch, compute_force=False)["energy"].detach()


def test_grafted_embedding_learns_to_separate_charges(blind):
    import copy

    atoms, site = small_vacancy()
    # Two frames of the SAME geometry, charges 0 and +1, whose energies differ by 0.5 eV.
    frames = [annotate_atoms(atoms.copy(), q, site, mode="site") for q in (0, 1)]
    grafted = graft_charge_embedding(blind, mode="site")
    # The zero-initialised projection is not a dead point: its gradient is silu'(0) * h(q) != 0.
    batch = _batch(grafted, frames).to_dict()
    grafted(batch, training=True, compute_force=False)["energy"][1].backward()
    assert grafted.joint_embedding.project[0].weight.grad.abs().max() > 1e-6

    grafted.zero_grad()
    base = grafted(batch, compute_force=False)["energy"].detach()
    assert base[0] == base[1]  # identical before training
    targets = [float(base[0]), float(base[0]) + 0.5]
    before_blind, after_blind = _train(copy.deepcopy(blind), frames, targets)
    before, after = _train(grafted, frames, targets)
    assert after_blind[0] == after_blind[1]  # a charge-blind model cannot tell the frames apart
    assert before[0] == before[1]
    assert float(after[1] - after[0]) > 0.1  # the charge-aware one separates them


# --- size consistency ----------------------------------------------------------------------------


def test_site_mode_is_size_consistent_and_global_is_not():
    """E(+1) - E(0) of one vacancy in 63- and 127-atom cells with identical local environments."""
    bulk = read(TREE / "CdTe_bulk_POSCAR")
    site = np.array(V_CD_SITE_FRAC) @ bulk.cell.array
    cells = [vacancy_supercell(bulk, site, repeat) for repeat in ((1, 1, 1), (2, 1, 1))]
    assert [len(c) for c in cells] == [63, 127]
    differences = {}
    for mode in ("site", "global"):
        # Random (not zero-initialised) embedding weights, so the charge really acts.
        model = build_charge_aware_mace([48, 52], mode, r_max=4.5, num_interactions=2, channels=8, seed=3)
        differences[mode] = charge_energy_differences(calculator(model), cells, site, mode)
    site_small, site_large = differences["site"]
    assert abs(site_small) > 0.01  # the charge matters...
    assert abs(site_large - site_small) < 0.010  # ...by the same amount in both cells
    global_small, global_large = differences["global"]
    assert global_large / global_small == pytest.approx(127 / 63, rel=0.05)  # extensive


# --- backend: detection, prepare_atoms, relaxation ------------------------------------------------


@pytest.fixture(scope="module")
def site_model_path(tmp_path_factory) -> Path:
    return build_tiny_mace(tmp_path_factory.mktemp("site") / "site.model", charge_mode="site")


def load(path, **request):
    return get_relaxer("mace").load(CalculatorRequest(model=str(path), device="cpu", **request))


@pytest.mark.parametrize("mode", CHARGE_MODES)
def test_backend_detects_charge_mode(tmp_path, blind_path, mode):
    loaded = load(build_tiny_mace(tmp_path / f"{mode}.model", charge_mode=mode))
    assert loaded.charge_aware is True
    assert loaded.charge_mode == mode
    assert callable(loaded.prepare_atoms)
    blind = load(blind_path)
    assert blind.charge_aware is False and blind.charge_mode is None and blind.prepare_atoms is None


def test_site_model_needs_site_and_charge(site_model_path):
    loaded = load(site_model_path)
    atoms, site = small_vacancy()
    atoms.info["charge"] = 1
    with pytest.raises(ModelError, match="defect_site") as error:
        loaded.prepare_atoms(atoms)
    assert "Cartesian" in str(error.value)
    del atoms.info["charge"]
    atoms.info["defect_site"] = list(site)
    with pytest.raises(ModelError, match="charge"):
        loaded.prepare_atoms(atoms)


def test_site_model_relaxes_and_charge_changes_energy(site_model_path):
    loaded = load(site_model_path)
    atoms, site = small_vacancy()
    energies = {}
    for q in (0, -2):
        structure = atoms.copy()
        structure.info["charge"] = q
        structure.info["defect_site"] = [float(x) for x in site]
        loaded.prepare_atoms(structure)
        assert structure.arrays["defect_charge"].sum() == 4 * q
        result = relax(structure, loaded.calculator, RelaxSettings(steps=5, fmax=0.05))
        assert result.status in ("converged", "unconverged")
        # The features travel with the relaxed structure and stay fixed during the relaxation.
        np.testing.assert_array_equal(result.atoms.arrays["defect_charge"], structure.arrays["defect_charge"])
        energies[q] = result.energy
    assert np.isfinite(list(energies.values())).all()
    assert abs(energies[-2] - energies[0]) > 1e-4


def test_readout_heads_share_body_and_keep_charge(blind, v_cd, tmp_path):
    import torch

    atoms, site = v_cd
    multi = add_readout_heads(graft_charge_embedding(blind, mode="site"), heads=("pbe", "hse"))
    assert multi.heads == ["pbe", "hse"]
    torch.save(multi, tmp_path / "multi.model")
    hse, pbe = load(tmp_path / "multi.model"), load(tmp_path / "multi.model", head="pbe")
    assert hse.head == "hse" and hse.charge_mode == "site"
    structure = atoms.copy()
    structure.info.update(charge=1, defect_site=list(site))
    hse.prepare_atoms(structure)
    e_source, f_source = energy_forces(calculator(blind), structure)
    for loaded in (hse, pbe):
        e_head, f_head = energy_forces(loaded.calculator, structure)
        assert abs(e_head - e_source) < 1e-8
        assert np.abs(f_head - f_source).max() < 1e-8
    with pytest.raises(ModelError, match="already has heads"):
        add_readout_heads(multi)


def test_graft_onto_multihead_model_keeps_every_head(tmp_path, v_cd):
    import torch

    atoms, site = v_cd
    source = torch.load(build_tiny_mace(tmp_path / "mh.model", heads=["pbe", "hse"]), weights_only=False)
    grafted = graft_charge_embedding(source, mode="site", embedding_readout=True)
    assert grafted.heads == ["pbe", "hse"] and hasattr(grafted, "embedding_readout")
    structure = annotate_atoms(atoms.copy(), -1, site, mode="site")
    for head in ("pbe", "hse"):
        e0, f0 = energy_forces(calculator(source, head=head), structure)
        e1, f1 = energy_forces(calculator(grafted, head=head), structure)
        assert abs(e1 - e0) < 1e-8 and np.abs(f1 - f0).max() < 1e-8, head


def test_marker_radius_saved_in_the_model_is_used_by_the_backend(site_model_path, tmp_path):
    import torch

    model = torch.load(site_model_path, map_location="cpu", weights_only=False)
    model.snb_ml_marker_radius = 0.2  # as snb-ml train stores a non-default radius
    path = tmp_path / "radius.model"
    torch.save(model, path)
    atoms, site = small_vacancy()
    atoms.info.update(charge=1, defect_site=list(site))
    with pytest.raises(InputError, match="No atom lies within"):
        load(path).prepare_atoms(atoms)
    load(site_model_path).prepare_atoms(atoms)  # the default radius finds the neighbours
