"""Faults that used to give a wrong answer or lose files with exit code 0 (issue: reliability probe).

Each test drives the real runner (EMT through the ``ase`` backend on ShakeNBreak-written trees), the real
OUTCAR reader on trimmed real VASP output, or the real doped drop-in, and fails on the code before the fix.
"""

import contextlib
import errno
import gzip
import hashlib
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA, EMT
from monty.serialization import loadfn

import snb_ml.safe_write
import snb_ml.tree.layout
import snb_ml.tree.writer
from snb_ml.cli import main
from snb_ml.errors import InputError, ModelError, OutputError
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings


def emt(**relax) -> RunSettings:
    return RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings(**relax)
    )


def quiet_run(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EMT has no charge embedding (v_Cu_-1)
        return run_tree(*args, **kwargs)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def provenance(ml_defect: Path) -> dict:
    return json.loads((ml_defect / "snb_ml_provenance.json").read_text())


# ----- 1. stale results -----------------------------------------------------------------------------


def test_changed_starting_structures_are_redone_not_reused(cu_tree, capsys):
    quiet_run(cu_tree / "v_Cu_0", emt())
    ml = cu_tree / "ml_tree" / "v_Cu_0"
    plus40 = (ml / "Bond_Distortion_40.0%" / "CONTCAR").read_text()
    # "Regenerate" two distortions in place: the -40 % folder now starts from the +40 % structure.
    source = cu_tree / "v_Cu_0"
    shutil.copy(source / "Bond_Distortion_40.0%" / "POSCAR", source / "Bond_Distortion_-40.0%" / "POSCAR")
    capsys.readouterr()
    report = quiet_run(cu_tree / "v_Cu_0", emt())
    records = report.defects[0].records
    redone = sorted(f for f, r in records.items() if not r.skipped)
    assert redone == ["Bond_Distortion_-40.0%"]
    assert (
        "v_Cu_0: 1 result(s) redone: starting structures changed since the last run"
        in capsys.readouterr().out
    )
    # the ML tree now holds the relaxation of the new start (EMT is deterministic: the +40 % minimum)
    assert (ml / "Bond_Distortion_-40.0%" / "CONTCAR").read_text().splitlines()[8:] == plus40.splitlines()[8:]
    stored = provenance(ml)["distortions"]["Bond_Distortion_-40.0%"]
    expected = hashlib.sha256((source / "Bond_Distortion_-40.0%" / "POSCAR").read_bytes()).hexdigest()
    assert stored["input_sha256"] == expected and stored["charge"] == 0


def test_a_cell_of_another_size_is_never_reused(cu_tree):
    from ase.build import bulk
    from ase.io import read, write

    quiet_run(cu_tree / "v_Cu_-1", emt())
    # the same defect regenerated in a 2x2x2 primitive-cell supercell (7 atoms instead of 31)
    small = bulk("Cu", "fcc", a=3.61).repeat(2)
    del small[0]
    for folder in ("Unperturbed", "Rattled"):
        write(cu_tree / "v_Cu_-1" / folder / "POSCAR", small, format="vasp", direct=True)
    report = quiet_run(cu_tree / "v_Cu_-1", emt())
    assert not any(r.skipped for r in report.defects[0].records.values())
    for folder in ("Unperturbed", "Rattled"):
        assert len(read(cu_tree / "ml_tree" / "v_Cu_-1" / folder / "CONTCAR")) == 7


def test_another_charge_redoes_the_results(cu_tree, capsys):
    override = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False, charge=3)
    quiet_run(cu_tree / "v_Cu_-1", override)
    capsys.readouterr()
    report = quiet_run(cu_tree / "v_Cu_-1", emt())
    assert report.defects[0].charge == -1
    assert not any(r.skipped for r in report.defects[0].records.values())
    assert "the charge changed since the last run (+3 -> -1)" in capsys.readouterr().out
    stored = provenance(cu_tree / "ml_tree" / "v_Cu_-1")
    assert stored["charge"] == -1 and {d["charge"] for d in stored["distortions"].values()} == {-1}


def test_a_changed_model_file_is_never_mixed_into_a_tree(cu_tree, tmp_path):
    # Same model name and version, another file behind it (a re-trained model written to the same path, or
    # another foundation model behind a default name): its results must not join the stored ones.
    from ase.calculators.emt import EMT as EMTCalculator

    from snb_ml.relaxers.base import LoadedModel
    from snb_ml.relaxers.mace_loading import file_sha256

    weights = tmp_path / "model.file"

    def model_from(content: bytes) -> LoadedModel:
        weights.write_bytes(content)
        return LoadedModel(
            calculator=EMTCalculator(), name="EMT from a file", version="1", source=str(weights),
            file_sha256=file_sha256(weights),
        )  # fmt: skip

    first = quiet_run(cu_tree, emt(), defects=["v_Cu_0"], model=model_from(b"first weights"))
    assert first.defects[0].error is None
    stored = provenance(cu_tree / "ml_tree" / "v_Cu_0")
    assert stored["model"]["file"]["sha256"] == hashlib.sha256(b"first weights").hexdigest()
    before = snapshot(cu_tree / "ml_tree")
    again = quiet_run(cu_tree, emt(), defects=["v_Cu_0"], model=model_from(b"other weights"))
    assert "holds results of model file sha256" in again.defects[0].error
    assert snapshot(cu_tree / "ml_tree") == before
    forced = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False, force=True)
    redone = quiet_run(cu_tree, forced, defects=["v_Cu_0"], model=model_from(b"other weights"))
    assert redone.defects[0].error is None
    stored = provenance(cu_tree / "ml_tree" / "v_Cu_0")
    assert stored["model"]["file"]["sha256"] == hashlib.sha256(b"other weights").hexdigest()


def test_distortions_gone_from_the_input_are_set_aside(cu_tree):
    quiet_run(cu_tree / "v_Cu_0", emt())
    shutil.rmtree(cu_tree / "v_Cu_0" / "Bond_Distortion_40.0%")
    report = quiet_run(cu_tree / "v_Cu_0", emt())
    ml = cu_tree / "ml_tree" / "v_Cu_0"
    assert "Bond_Distortion_40.0%" not in report.defects[0].records
    assert not (ml / "Bond_Distortion_40.0%").exists()
    assert (ml / "snb_ml_previous" / "Bond_Distortion_40.0%_1" / "CONTCAR").is_file()  # kept, not deleted
    assert "Bond_Distortion_40.0%" not in provenance(ml)["distortions"]
    assert set(loadfn(ml / "v_Cu_0.yaml")["distortions"]) == {-0.4, -0.2, 0.0, 0.2}


# ----- 2 and 8. output locations ----------------------------------------------------------------------


def test_output_at_another_shakenbreak_tree_is_refused(cu_tree, tmp_path):
    from ase.io import read, write

    other = Path(shutil.copytree(DATA / "Cu_tree", tmp_path / "other_tree"))
    atoms = read(other / "v_Cu_0" / "Unperturbed" / "POSCAR")
    atoms.rattle(0.05, seed=1)  # another tree's structures, so an overwrite would show
    write(other / "v_Cu_0" / "Unperturbed" / "POSCAR", atoms, format="vasp", direct=True)
    before = snapshot(other)
    with pytest.raises(OutputError, match=r"is a ShakeNBreak input tree .* would overwrite its files"):
        run_tree(cu_tree, emt(), output=other)
    assert snapshot(other) == before


@pytest.mark.parametrize(
    "inside", ["v_Cu_0/Unperturbed/ml", "v_Cu_0/ml", "v_Cu_0/Bond_Distortion_20.0%", "v_Cu_-1"]
)
def test_output_inside_the_input_tree_is_refused(cu_tree, inside):
    before = snapshot(cu_tree)
    with pytest.raises(OutputError, match="defect folder|distortion folder|DFT tree itself"):
        run_tree(cu_tree, emt(), output=cu_tree / inside)
    assert snapshot(cu_tree) == before


def test_ml_tree_of_another_input_tree_is_refused(cu_tree, tmp_path):
    other = Path(shutil.copytree(DATA / "Cu_tree", tmp_path / "other_tree"))
    shared = tmp_path / "shared_ml"
    quiet_run(cu_tree, emt(), output=shared)
    before = snapshot(shared)
    with pytest.raises(OutputError, match=r"ML tree of another input tree .*Cu_tree.*other_tree"):
        run_tree(other, emt(), output=shared)
    assert snapshot(shared) == before
    forced = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False, force=True)
    report = quiet_run(other, forced, output=shared)
    assert not report.failed
    assert json.loads((shared / "snb_ml_tree.json").read_text())["input_tree"] == str(other.resolve())


def test_input_and_ml_tree_moved_together_are_still_reused(cu_tree, tmp_path):
    quiet_run(cu_tree / "v_Cu_-1", emt())
    moved = shutil.move(cu_tree, tmp_path / "moved")
    report = quiet_run(Path(moved) / "v_Cu_-1", emt())
    assert all(r.skipped for r in report.defects[0].records.values())


# ----- 3. high energy judged against this run's Unperturbed -------------------------------------------


def test_high_energy_is_judged_again_when_the_reference_appears(cu_tree):
    defect = cu_tree / "v_Cu_0"
    poscar = (defect / "Unperturbed" / "POSCAR").read_text()
    (defect / "Unperturbed" / "POSCAR").write_text("")  # Unperturbed fails in the first run
    first = quiet_run(defect, emt(high_energy_threshold=-1.0))
    assert first.defects[0].records["Unperturbed"].status == "error"
    assert {r.status for f, r in first.defects[0].records.items() if f != "Unperturbed"} == {"converged"}

    (defect / "Unperturbed" / "POSCAR").write_text(poscar)
    second = quiet_run(defect, emt(high_energy_threshold=-1.0)).defects[0].records
    marked = sorted(f for f, r in second.items() if r.status == "high_energy")
    assert marked == ["Bond_Distortion_-20.0%", "Bond_Distortion_-40.0%", "Bond_Distortion_0.0%",
                      "Bond_Distortion_20.0%", "Bond_Distortion_40.0%"]  # fmt: skip
    assert all(second[f].skipped for f in marked)  # judged again, not relaxed again
    ml = cu_tree / "ml_tree" / "v_Cu_0"
    for folder in marked:
        assert (ml / f"{folder}_High_Energy" / "CONTCAR").is_file() and not (ml / folder).exists()
        assert provenance(ml)["distortions"][folder]["output_folder"] == f"{folder}_High_Energy"
    assert "distortions: {}" in (ml / "v_Cu_0.yaml").read_text()

    # The judgement is a function of this run only: the usual threshold un-marks them again.
    third = quiet_run(defect, emt()).defects[0].records
    assert {r.status for r in third.values()} == {"converged"}
    for folder in marked:
        assert (ml / folder / "CONTCAR").is_file() and not (ml / f"{folder}_High_Energy").exists()


def test_missing_unperturbed_warns_what_it_disables(cu_tree):
    shutil.rmtree(cu_tree / "v_Cu_0" / "Unperturbed")
    with pytest.warns(UserWarning, match=r"no Unperturbed folder.*_High_Energy.*snb-ml select"):
        run_tree(cu_tree / "v_Cu_0", emt())


# ----- 4. truncated OUTCAR ------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["mid_energy_line", "before_loop_line", "mid_forces"])
def test_outcar_cut_inside_a_step_drops_that_step(tmp_path, cut):
    from snb_ml.data.vasp import read_outcar_frames

    source = DATA / "vasp" / "MgO_tree" / "Mg_O_0" / "vasp_std" / "OUTCAR.gz"
    with gzip.open(source, "rt") as stream:
        text = stream.read()
    whole = [frame.get_potential_energy() for frame in read_outcar_frames(source)]
    assert len(whole) == 3
    last = text.rindex("energy  without entropy=")
    if cut == "mid_energy_line":  # "energy(sigma->0) =    -1331" of the true -1331.57384828
        end = text.index("energy(sigma->0) =", last) + len("energy(sigma->0) =    -1331")
    elif cut == "before_loop_line":
        end = text.index("\n", last) + 1
    else:
        end = text.rindex("total drift") - 300
    (tmp_path / "OUTCAR").write_text(text[:end])
    frames = read_outcar_frames(tmp_path / "OUTCAR")
    assert [frame.get_potential_energy() for frame in frames] == whole[:2]


# ----- 5. free-energy terms ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nacl():
    from doped_fixtures import build_nacl_thermo

    return build_nacl_thermo()


def test_nan_terms_are_rejected_naming_defect_and_term(nacl):
    from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics

    with pytest.raises(InputError, match=r"term 'vib' of 'v_Cl'.*finite"):
        FiniteTemperatureThermodynamics.from_thermodynamics(nacl, terms={"v_Cl": {"vib": float("nan")}})
    table = ([300.0, 600.0], [0.1, float("nan")])
    with pytest.raises(InputError, match=r"term 'vib' of 'v_Cl_\+1'.*not finite at \[600.0\]"):
        FiniteTemperatureThermodynamics.from_thermodynamics(nacl, terms={"v_Cl_+1": {"vib": table}})
    thermo = FiniteTemperatureThermodynamics.from_thermodynamics(
        nacl, terms={"v_Cl": {"struc": lambda t: math.nan if t > 500 else -0.01}}
    )
    with pytest.raises(InputError, match=r"term 'struc' of 'v_Cl' is nan eV at 1000 K"):
        thermo.get_equilibrium_concentrations(temperature=1000, fermi_level=0.4)


def test_tabulated_terms_refuse_temperatures_outside_their_table(nacl):
    from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics

    terms = {"v_Cl": {"vib": ([300.0, 600.0], [-0.1, -0.3])}}
    thermo = FiniteTemperatureThermodynamics.from_thermodynamics(nacl, terms=terms)
    assert thermo.free_energy_correction("v_Cl_0", 450.0) == pytest.approx(-0.2)
    with pytest.raises(InputError, match=r"'vib' of 'v_Cl' is tabulated for 300-600 K only.*1500 K"):
        thermo.get_equilibrium_concentrations(temperature=1500, fermi_level=0.4)
    held = FiniteTemperatureThermodynamics.from_thermodynamics(nacl, terms=terms, extrapolate=True)
    assert held.free_energy_correction("v_Cl_0", 1500.0) == pytest.approx(-0.3)
    again = FiniteTemperatureThermodynamics.from_dict(held.as_dict())
    assert again.extrapolate and again.free_energy_correction("v_Cl_0", 1500.0) == pytest.approx(-0.3)


# ----- 6. full disk ------------------------------------------------------------------------------------


@contextlib.contextmanager
def full_disk_after(monkeypatch, defect: str, contcars: int):
    """Let ``contcars`` CONTCARs of ``defect`` be written, then fail its writes with ENOSPC.

    The error is raised inside snb_ml's real atomic writer, as a failed write() would be (no file name).
    """
    real = snb_ml.safe_write.atomic_path
    written: list[Path] = []
    full = []

    @contextlib.contextmanager
    def writer(target):
        target = Path(target)
        with real(target) as temporary:
            if defect in target.parts and target.name == "CONTCAR":
                (full if len(written) >= contcars else written).append(target)
            if defect in target.parts and full:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield temporary

    for module in (snb_ml.safe_write, snb_ml.tree.writer, snb_ml.tree.layout):
        monkeypatch.setattr(module, "atomic_path", writer)
    yield
    monkeypatch.undo()


def test_disk_full_stops_one_defect_keeps_its_results_and_exits_non_zero(cu_tree, monkeypatch):
    ml = cu_tree / "ml_tree"
    with full_disk_after(monkeypatch, "v_Cu_0", contcars=2):
        args = ["run", "-p", str(cu_tree), *EMT, "--no-progress", "--fmax", "0.05"]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # not an OSError
    assert "Error for v_Cu_0: Cannot write " in result.output and "No space left on device" in result.output
    assert f"{ml / 'v_Cu_0'}" in result.output and "2 distortion(s) already written are kept" in result.output
    # the other defect finished; the two written distortions are intact; no temporary file is left
    assert {d["status"] for d in provenance(ml / "v_Cu_-1")["distortions"].values()} == {"converged"}
    kept = provenance(ml / "v_Cu_0")["distortions"]
    assert len(kept) == 2 and all((ml / "v_Cu_0" / f / "CONTCAR").stat().st_size > 0 for f in kept)
    assert not list(ml.rglob(".snb_ml_tmp_*"))
    # with space again, the rerun reuses what was written and finishes the rest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run_tree(cu_tree, emt(fmax=0.05))
    records = {d.name: d.records for d in report.defects}["v_Cu_0"]
    assert sorted(f for f, r in records.items() if r.skipped) == sorted(kept)
    assert not report.failed and len(records) == 6


# ----- 7. validation holes -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_fmax_is_refused(cu_tree, value):
    result = CliRunner().invoke(main, ["run", "-p", str(cu_tree), *EMT, "--no-progress", "--fmax", value])
    assert result.exit_code == 1 and "fmax must be a finite number" in result.output
    assert not (cu_tree / "ml_tree").exists()
    with pytest.raises(InputError, match="finite"):
        RunSettings(relax=RelaxSettings(fmax=float(value)))
    with pytest.raises(InputError, match="finite"):
        RunSettings(calculator_options={"rc": float(value)})


def test_provenance_is_strict_json_even_for_a_nan_model(cu_tree):
    settings = RunSettings(
        relaxer="ase", model="nan_calc:NanEMT", progress=False, calculator_options={"after": 0}
    )
    report = quiet_run(cu_tree / "v_Cu_-1", settings)
    assert {r.status for r in report.defects[0].records.values()} == {"exploded"}
    text = (cu_tree / "ml_tree" / "v_Cu_-1" / "snb_ml_provenance.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} in the provenance file")

    json.loads(text, parse_constant=refuse)


def test_non_utf8_metadata_is_one_clear_error(cu_tree):
    bad = b'{"defects": {"v_Cu\xff": {}}}'
    (cu_tree / "distortion_metadata.json").write_bytes(bad)
    with pytest.raises(InputError, match=r"distortion_metadata.json is not UTF-8 text \(byte 0xff"):
        run_tree(cu_tree, emt())
    shutil.copy(DATA / "Cu_tree" / "distortion_metadata.json", cu_tree / "distortion_metadata.json")
    (cu_tree / "v_Cu_0" / "distortion_metadata.json").write_bytes(bad)
    report = quiet_run(cu_tree, emt())
    by_name = {d.name: d for d in report.defects}
    assert "v_Cu_0/distortion_metadata.json is not UTF-8 text" in by_name["v_Cu_0"].error
    assert by_name["v_Cu_-1"].error is None and len(by_name["v_Cu_-1"].records) == 2


def test_free_energy_names_the_element_the_model_lacks(tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT as EmtCalculator
    from ase.io import write

    from snb_ml.relaxers.ase_backend import load_ase_calculator
    from snb_ml.relaxers.base import CalculatorRequest
    from snb_ml.thermo.workflow import compute_free_energies

    host = bulk("CdTe", "zincblende", a=6.5, cubic=True)
    write(tmp_path / "POSCAR_bulk", host, format="vasp")
    defect = host.copy()
    del defect[0]
    write(tmp_path / "POSCAR_defect", defect, format="vasp")
    write(tmp_path / "POSCAR_Cd", bulk("Cd", "hcp", a=3.0, c=5.6), format="vasp")
    model = load_ase_calculator(CalculatorRequest(model="ase.calculators.emt:EMT"))
    with pytest.raises(ModelError, match=r"not trained on Cd, Te \(needed by --defect .*POSCAR_defect\)"):
        compute_free_energies(
            tmp_path / "POSCAR_defect",
            tmp_path / "POSCAR_bulk",
            {"Cd": tmp_path / "POSCAR_Cd"},
            EmtCalculator(),
            np.array([0.0, 300.0]),
            check_elements=model.check_elements,
        )


def test_free_energy_unneeded_reference_warns_and_is_not_stored(tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT as EmtCalculator
    from ase.io import write

    from snb_ml.thermo.workflow import compute_free_energies

    host = bulk("Cu", "fcc", a=3.59, cubic=True)
    defect = host.copy()
    del defect[0]
    for name, atoms in (("defect", defect), ("bulk", host), ("Cu", bulk("Cu", "fcc", a=3.59))):
        write(tmp_path / f"POSCAR_{name}", atoms, format="vasp")
    write(tmp_path / "POSCAR_Ag", bulk("Ag", "fcc", a=4.09), format="vasp")
    references = {"Cu": tmp_path / "POSCAR_Cu", "Ag": tmp_path / "POSCAR_Ag"}
    with pytest.warns(UserWarning, match=r"--reference Ag=.*POSCAR_Ag not used.*not computed and not stored"):
        data = compute_free_energies(
            tmp_path / "POSCAR_defect",
            tmp_path / "POSCAR_bulk",
            references,
            EmtCalculator(),
            np.array([0.0, 300.0]),
            reference_min_length=5.0,
            log=lambda *_: None,
        )
    assert set(data["references"]) == {"Cu"}


@pytest.mark.parametrize("option", ["--tmax", "--tmin", "--tstep"])
def test_free_energy_refuses_nan_temperatures(tmp_path, option):
    from snb_ml.cli.thermo import free_energy

    poscar = DATA / "Cu_tree" / "v_Cu_0" / "Unperturbed" / "POSCAR"
    args = [
        "--defect",
        str(poscar),
        "--bulk",
        str(poscar),
        *EMT,
        option,
        "nan",
        "-o",
        str(tmp_path / "f.json"),
    ]
    result = CliRunner().invoke(free_energy, args)
    assert result.exit_code == 1 and "Need 0 <= --tmin <= --tmax and --tstep > 0" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "f.json").exists()


# ----- 9. small ones --------------------------------------------------------------------------------


def test_select_removes_the_temporary_png_of_a_killed_select(cu_tree):
    from snb_ml.minima.selection import select_tree

    quiet_run(cu_tree / "v_Cu_0", emt())
    ml = cu_tree / "ml_tree" / "v_Cu_0"
    leftover = ml / ".snb_ml_tmp_snb_ml_selection.png.k1ll3d"
    leftover.write_bytes(b"\x89PNG half")
    running = ml / ".snb_ml_tmp_CONTCAR.x"  # a run's own temporary: not select's to remove
    running.write_text("")
    select_tree(cu_tree / "ml_tree")
    assert not leftover.exists() and running.exists()
    assert (ml / "snb_ml_selection.png").read_bytes().startswith(b"\x89PNG\r\n")


def test_suggested_commands_are_shell_quoted(tmp_path):
    import shlex

    from snb_ml.runner import RunReport
    from snb_ml.summary import format_summary

    tree = tmp_path / "my project" / "ml_tree"
    text = format_summary(RunReport(ml_tree=tree, defects=[], model={"name": "m", "version": "1"}, seconds=0))
    assert f"snb-analyse -p {shlex.quote(str(tree))}" in text
    assert shlex.split(text.split("snb-plot ")[1].rstrip(")"))[1] == str(tree)


def test_undo_message_names_the_tree(cu_tree, monkeypatch):
    from snb_ml.cli.select import select

    quiet_run(cu_tree, emt())
    monkeypatch.chdir(cu_tree / "v_Cu_0")
    assert CliRunner().invoke(select, ["-p", "../ml_tree", "--dft-tree", ".."]).exit_code == 0
    undo = CliRunner().invoke(select, ["--undo", "--dft-tree", ".."])
    assert undo.exit_code == 0, undo.output
    assert f"in {cu_tree.resolve()} as before the hand-off" in undo.output and " in .." not in undo.output


# ----- memory ----------------------------------------------------------------------------------------


class ScratchEMT:
    """EMT that also fills ``per_atom`` bytes of scratch memory per atom during each call.

    Stands in for a model whose forces cost memory in proportion to the atoms of the batch, as CHGNet's
    graphs do (~5 MB per atom of dense MgO); the pages are written, so they are resident.
    """

    def __init__(self, per_atom: int):
        from ase.calculators.emt import EMT as EmtCalculator

        from snb_ml.batch.evaluators import CalculatorLoopEvaluator

        self.inner = CalculatorLoopEvaluator(EmtCalculator())
        self.name, self.device, self.batched, self.faster_on_cpu = "scratch EMT", "cpu", True, True
        self.per_atom = per_atom
        self.calls: list[int] = []

    def evaluate(self, structures):
        atoms = sum(len(s) for s in structures)
        scratch = np.ones(atoms * self.per_atom // 8)
        self.calls.append(len(structures))
        result = self.inner.evaluate(structures)
        del scratch
        return result


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is measured on Linux")
def test_default_cpu_batch_is_bounded_by_measured_memory(monkeypatch):
    from ase.build import bulk

    from snb_ml.batch import BatchJob, engine, memory, relax_batched

    memory.release_free_memory()
    allowed = 200e6  # above what the process holds now: room for ~3 of these 32-atom cells per call
    monkeypatch.setattr(engine, "CPU_MEMORY_LIMIT", memory.resident() + allowed)
    evaluator = ScratchEMT(per_atom=2_000_000)
    jobs = []
    for seed in range(8):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        jobs.append(BatchJob(seed, atoms))
    start = memory.start_peak_measurement()
    results = dict(relax_batched(jobs, evaluator, RelaxSettings(fmax=0.05, steps=30)))
    grown = memory.peak_since_start() - start
    assert {r.status for r in results.values()} == {"converged"}
    assert evaluator.calls[0] == 1  # measured on one structure first
    assert max(evaluator.calls) in (2, 3)  # 64 MB per structure fills, never exceeds, the 200 MB allowed
    assert grown < allowed + 60e6  # the old budget put all 8 (512 MB of scratch) in one call
