"""The batched engine: same minima as the sequential engine, faults isolated to one batch member."""

import dataclasses

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from snb_ml.batch import BatchJob, batch_evaluator_for, relax_batched
from snb_ml.batch.evaluators import CalculatorLoopEvaluator
from snb_ml.batch.tree import choose_engine
from snb_ml.errors import InputError
from snb_ml.relax import CONVERGED, EXPLODED, RelaxSettings, relax
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings

try:
    from mace_models import build_tiny_mace
except ImportError:  # tests/ imported as a package
    from tests.mace_models import build_tiny_mace

pytestmark = [
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*charge embedding.*:UserWarning"),
]


def copper_structures():
    """Cu vacancies in three supercell sizes (15, 31 and 47 atoms), rattled differently: a mixed batch."""
    structures = []
    for seed, repeat in enumerate([(2, 2, 2), (2, 2, 3), (2, 2, 2), (1, 2, 2)]):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        del atoms[0]
        atoms.rattle(0.1, seed=seed)
        atoms.info["tag"] = seed
        structures.append(atoms)
    return structures


def relax_all(structures, evaluator, settings, **kwargs):
    jobs = [BatchJob(i, atoms) for i, atoms in enumerate(structures)]
    results = {job.key: result for job, result in relax_batched(jobs, evaluator, settings, **kwargs)}
    return [results[i] for i in range(len(structures))]


def assert_same_minima(sequential, batched, dr=0.01, de=1e-3):
    for one, other in zip(sequential, batched, strict=True):
        assert one.status == other.status == CONVERGED
        assert abs(one.energy - other.energy) < de
        assert np.abs(one.atoms.positions - other.atoms.positions).max() < dr


def test_joining_and_leaving_batch_follows_the_sequential_path():
    settings = RelaxSettings(fmax=0.02, trajectory_frames=4)
    structures = copper_structures()
    sequential = [relax(atoms, EMT(), settings) for atoms in structures]
    # Three at a time: structures leave as they converge and the queued ones take their place.
    batched = relax_all(structures, CalculatorLoopEvaluator(EMT()), settings, max_structures=3)
    assert_same_minima(sequential, batched, dr=1e-9, de=1e-9)
    assert [r.steps for r in sequential] == [r.steps for r in batched]
    assert all(len(r.frames) == 4 and r.frames[-1].info["step"] == r.steps for r in batched)


class FaultyEvaluator(CalculatorLoopEvaluator):
    """EMT in a loop, with faults: NaN forces for one tagged structure, a crash for another, or OOM."""

    def __init__(self, nan_tag=None, crash_tag=None, oom_above_atoms=None):
        super().__init__(EMT())
        self.nan_tag, self.crash_tag, self.oom_above_atoms = nan_tag, crash_tag, oom_above_atoms
        self.calls = []

    def evaluate(self, structures):
        import torch

        self.calls.append(sum(len(a) for a in structures))
        if self.oom_above_atoms and self.calls[-1] > self.oom_above_atoms:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(a.info.get("tag") == self.crash_tag for a in structures):
            raise RuntimeError("model crashed on this structure")
        energies, forces = super().evaluate(structures)
        for index, atoms in enumerate(structures):
            if atoms.info.get("tag") == self.nan_tag and len(self.calls) > 3:
                forces[index] = np.full_like(forces[index], np.nan)
        return energies, forces


def test_nan_in_one_member_stops_only_that_member():
    settings = RelaxSettings(fmax=0.02)
    structures = copper_structures()
    sequential = [relax(atoms, EMT(), settings) for atoms in structures]
    batched = relax_all(structures, FaultyEvaluator(nan_tag=2), settings)
    assert batched[2].status == EXPLODED and "non-finite" in batched[2].message
    assert np.isfinite(batched[2].atoms.positions).all()
    others = [i for i in range(4) if i != 2]
    assert_same_minima([sequential[i] for i in others], [batched[i] for i in others], dr=1e-9, de=1e-9)


def test_model_error_on_one_member_is_returned_for_it_alone():
    structures = copper_structures()
    batched = relax_all(structures, FaultyEvaluator(crash_tag=1), RelaxSettings(fmax=0.05))
    assert isinstance(batched[1], RuntimeError)
    assert all(batched[i].status == CONVERGED for i in (0, 2, 3))


def test_out_of_memory_shrinks_the_batch_and_continues():
    settings = RelaxSettings(fmax=0.02)
    structures = copper_structures()
    sequential = [relax(atoms, EMT(), settings) for atoms in structures]
    evaluator = FaultyEvaluator(oom_above_atoms=100)
    batched = relax_all(structures, evaluator, settings, max_atoms=1000)
    assert_same_minima(sequential, batched, dr=1e-9, de=1e-9)
    assert max(evaluator.calls) > 100 and evaluator.calls[-1] <= 100  # it tried, shrank, went on


def test_batched_engine_runs_fire_only():
    with pytest.raises(InputError, match="FIRE"):
        list(relax_batched([], CalculatorLoopEvaluator(EMT()), RelaxSettings(optimizer="BFGS")))


def cdte_starts(cdte_tree):
    folders = ["Unperturbed", "Bond_Distortion_-30.0%", "Dimer"]
    return [read(cdte_tree / "v_Cd_0" / folder / "POSCAR") for folder in folders]


def test_chgnet_batched_matches_sequential(cdte_tree):
    from snb_ml.relaxers.chgnet_backend import load_chgnet

    loaded = load_chgnet(CalculatorRequest())
    evaluator = batch_evaluator_for(loaded)
    assert evaluator.batched and evaluator.name == "CHGNet"
    evaluator.lanes = 2  # the CPU path: two structures on two threads
    settings = RelaxSettings(fmax=0.05)
    structures = cdte_starts(cdte_tree)[:2]
    sequential = [relax(atoms, loaded.calculator, settings) for atoms in structures]
    assert_same_minima(sequential, relax_all(structures, evaluator, settings))


def chgnet_edges(positions_graph, cell):
    """CHGNet-style graph arrays as sets of edges ``(centre, neighbour, image)``, bonds and angles."""
    centers, neighbors, images, d2u, bond_graph = positions_graph
    images = (
        np.rint(np.asarray(images, dtype=float) @ np.linalg.inv(cell)).astype(int)
        if cell is not None
        else images
    )
    edges = [
        (int(c), int(n), tuple(int(x) for x in image))
        for c, n, image in zip(centers, neighbors, images, strict=True)
    ]
    bonds = {}
    for edge, bond in zip(edges, d2u, strict=True):
        bonds.setdefault(int(bond), set()).add(edge)
    angles = {(int(row[0]), edges[int(row[2])], edges[int(row[4])]) for row in bond_graph}
    return set(edges), {frozenset(pair) for pair in bonds.values()}, angles


@pytest.mark.parametrize("cell", ["defect", "primitive"])
def test_chgnet_graph_arrays_are_chgnets_graph(cdte_tree, cell):
    from chgnet.graph import CrystalGraphConverter
    from pymatgen.io.ase import AseAtomsAdaptor

    from snb_ml.relaxers.chgnet_graphs import graph_arrays

    # A 63-atom V_Cd cell, and a 2-atom cell where atoms bond to their own periodic images.
    atoms = cdte_starts(cdte_tree)[1] if cell == "defect" else bulk("CdTe", "zincblende", a=6.48)
    ours = graph_arrays(atoms, atom_cutoff=6.0, bond_cutoff=3.0)
    theirs = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)(
        AseAtomsAdaptor.get_structure(atoms)
    )
    mine = chgnet_edges(
        (ours.centers, ours.neighbors, ours.shifts, ours.directed2undirected, ours.bond_graph),
        atoms.cell.array,
    )
    reference = chgnet_edges(
        (
            *theirs.atom_graph.T.tolist(),
            theirs.neighbor_image.tolist(),
            theirs.directed2undirected.tolist(),
            theirs.bond_graph.tolist(),
        ),
        None,
    )
    assert mine[0] == reference[0] and len(ours.centers) == len(theirs.atom_graph)
    assert mine[1] == reference[1]  # each bond is the same pair of directed edges
    assert mine[2] == reference[2] and len(ours.bond_graph) == len(theirs.bond_graph)
    assert np.array_equal(
        ours.directed2undirected[ours.undirected2directed], np.arange(len(ours.undirected2directed))
    )


def test_chgnet_lanes_match_chgnets_own_calculator(cdte_tree):
    from snb_ml.relaxers.chgnet_backend import load_chgnet
    from snb_ml.relaxers.chgnet_batch import ChgnetBatchEvaluator

    calculator = load_chgnet(CalculatorRequest()).calculator
    structures = cdte_starts(cdte_tree)
    structures.append(bulk("CdTe", "zincblende", a=6.48))  # mixed sizes in one call
    reference = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        reference.append((atoms.get_potential_energy(), atoms.get_forces()))
    for lanes in (1, 2, 3):
        evaluator = ChgnetBatchEvaluator(calculator, lanes=lanes)
        assert evaluator.array_graphs  # the installed CHGNet gets the fast path, not the fallback
        energies, forces = evaluator.evaluate(structures)
        for (energy, force), (ref_energy, ref_force) in zip(
            zip(energies, forces, strict=True), reference, strict=True
        ):
            assert abs(energy - ref_energy) < 2e-4  # float32 sums in another order
            assert force.shape == ref_force.shape and np.abs(force - ref_force).max() < 2e-3


def test_chgnet_graph_of_an_isolated_atom_is_refused():
    from ase import Atoms

    from snb_ml.relaxers.chgnet_graphs import graph_arrays

    atoms = Atoms("Cd2", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[20, 20, 20], pbc=True)
    atoms += Atoms("Te", positions=[[12, 12, 12]])
    with pytest.raises(ValueError, match=r"atoms \[2\] of .* no neighbour within 6.0 Å"):
        graph_arrays(atoms, atom_cutoff=6.0, bond_cutoff=3.0)


@pytest.fixture(scope="module")
def tiny_mace(tmp_path_factory):
    return build_tiny_mace(tmp_path_factory.mktemp("batch_mace") / "charge.model", charge_embedding=True)


def load_mace_model(path) -> LoadedModel:
    from snb_ml.plugins import get_relaxer

    return get_relaxer("mace").load(CalculatorRequest(model=str(path), device="cpu"))


def test_mace_batched_matches_sequential_with_mixed_sizes_and_charges(cdte_tree, tiny_mace):
    import torch

    torch.set_num_threads(1)
    loaded = load_mace_model(tiny_mace)
    evaluator = batch_evaluator_for(loaded)
    assert evaluator.batched and evaluator.name == "MACE"
    structures = cdte_starts(cdte_tree)
    smaller = structures[1].copy()[:40]  # a different size in the same batch
    structures.append(smaller)
    for charge, atoms in zip((-2, 0, 1, 2), structures, strict=True):
        atoms.info["charge"] = charge  # charge-aware model: each member keeps its own charge
    energies, _ = evaluator.evaluate(structures)
    for atoms, batched_energy in zip(structures, energies, strict=True):
        work = atoms.copy()
        work.calc = loaded.calculator
        assert abs(work.get_potential_energy() - batched_energy) < 1e-8
    settings = RelaxSettings(fmax=0.05, steps=60)
    sequential = [relax(atoms, loaded.calculator, settings) for atoms in structures]
    batched = relax_all(structures, evaluator, settings)
    for one, other in zip(sequential, batched, strict=True):
        assert one.status == other.status and one.steps == other.steps
        assert abs(one.energy - other.energy) < 1e-6
        assert np.abs(one.atoms.positions - other.atoms.positions).max() < 1e-6


def test_tree_run_batched_writes_what_sequential_writes(cdte_tree, tiny_mace, tmp_path):
    import shutil

    charged = cdte_tree / "v_Cd_-2"
    shutil.copytree(cdte_tree / "v_Cd_0", charged)
    common = {"relaxer": "mace", "model": str(tiny_mace), "progress": False}
    common["relax"] = RelaxSettings(fmax=0.05, steps=40)
    reports = {}
    for engine in ("sequential", "batched"):
        reports[engine] = run_tree(cdte_tree, RunSettings(engine=engine, **common), output=tmp_path / engine)
        assert reports[engine].engine == engine and not reports[engine].failed
    for one, other in zip(reports["sequential"].defects, reports["batched"].defects, strict=True):
        assert list(one.records) == list(other.records) == ["Unperturbed", "Bond_Distortion_-30.0%", "Dimer"]
        for folder, record in one.records.items():
            assert record.status == other.records[folder].status
            assert abs(record.energy - other.records[folder].energy) < 1e-6
    # Different charges, different energies: the batch passed each member's own charge.
    by_name = {d.name: d for d in reports["batched"].defects}
    assert by_name["v_Cd_-2"].unperturbed_energy != by_name["v_Cd_0"].unperturbed_energy
    import yaml

    energies = yaml.safe_load((tmp_path / "batched" / "v_Cd_0" / "v_Cd_0.yaml").read_text())
    assert set(energies) == {"Unperturbed", "distortions"} and set(energies["distortions"]) == {-0.3, "Dimer"}
    from snb_ml.summary import format_summary

    # Batch members' own times overlap: the summary shares out the wall time instead.
    assert "of wall time per relaxation (batched engine)" in format_summary(reports["batched"])
    assert "s per relaxation," in format_summary(reports["sequential"])


def test_engine_choice(tiny_mace):
    emt = LoadedModel(calculator=EMT(), name="EMT")
    mace = load_mace_model(tiny_mace)
    assert choose_engine(RunSettings(), mace, pending=5) == "sequential"  # slower batched on CPU
    assert choose_engine(RunSettings(engine="batched"), mace, pending=5) == "batched"
    mace.calculator.device = "cuda"  # what auto decides on a GPU, without needing one
    assert choose_engine(RunSettings(), mace, pending=5) == "batched"
    assert choose_engine(RunSettings(), mace, pending=1) == "sequential"
    assert choose_engine(RunSettings(), emt, pending=5) == "sequential"  # no batched evaluator
    bfgs = RunSettings(relax=RelaxSettings(optimizer="BFGS"))
    assert choose_engine(bfgs, mace, pending=5) == "sequential"
    with pytest.raises(InputError, match="FIRE only"):
        choose_engine(RunSettings(engine="batched", relax=RelaxSettings(optimizer="BFGS")), mace, 5)
    with pytest.raises(InputError, match="Unknown engine"):
        choose_engine(RunSettings(engine="fast"), mace, 5)


def test_site_charge_model_gets_defect_site_from_shakenbreak_metadata(cdte_tree, tmp_path):
    import shutil

    site_model = build_tiny_mace(tmp_path / "site.model", charge_mode="site")
    shutil.copytree(cdte_tree / "v_Cd_0", cdte_tree / "v_Cd_-2")
    settings = RunSettings(
        relaxer="mace", model=str(site_model), progress=False, relax=RelaxSettings(fmax=0.05, steps=30)
    )
    reports = {}
    for engine in ("batched", "sequential"):
        report = run_tree(cdte_tree, dataclasses.replace(settings, engine=engine), output=tmp_path / engine)
        assert report.engine == engine and not report.failed
        reports[engine] = {d.name: d.unperturbed_energy for d in report.defects}
    assert reports["batched"]["v_Cd_-2"] != reports["batched"]["v_Cd_0"]  # the charge reached the model
    for name, value in reports["batched"].items():
        assert abs(value - reports["sequential"][name]) < 1e-6


def test_constraints_hold_as_in_the_sequential_engine():
    from ase.constraints import FixAtoms

    settings = RelaxSettings(fmax=0.02)
    structures = copper_structures()[:2]
    for atoms in structures:
        atoms.set_constraint(FixAtoms(indices=[0, 1, 2]))
    sequential = [relax(atoms, EMT(), settings) for atoms in structures]
    batched = relax_all(structures, CalculatorLoopEvaluator(EMT()), settings)
    assert_same_minima(sequential, batched, dr=1e-9, de=1e-9)
    for start, result in zip(structures, batched, strict=True):
        assert np.abs(result.atoms.positions[:3] - start.positions[:3]).max() == 0


def test_lanes_balance_atoms_and_cover_every_structure_once():
    from ase import Atoms

    from snb_ml.batch.lanes import lane_count, split_into_lanes

    sizes = [63, 215, 63, 63, 8, 127]
    structures = [Atoms(f"H{n}") for n in sizes]
    lanes = split_into_lanes(structures, 2)
    assert sorted(i for lane in lanes for i in lane) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in lane) for lane in lanes]
    assert max(loads) - min(loads) <= 63  # greedy largest-first: within one cell of even
    assert all(lane == sorted(lane) for lane in lanes)
    assert lane_count("cuda:0", None, structures) == 1  # one lane on a GPU, whatever is asked
    assert lane_count("cpu", 8, structures[:3]) == 3  # never more lanes than structures
    assert lane_count("cpu", None, [Atoms("H8")] * 4) == 1  # too few atoms to split
