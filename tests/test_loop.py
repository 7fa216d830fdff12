"""`snb-ml loop`: EMT plays DFT, a mis-fitted EMT (refitted each round) plays the model (tests/loop_data.py).

The search: H_i in 32-atom Cu, 7 starts; the "DFT" ground state (octahedral H) is reachable only from the
two +-60 % starts, and the round-0 model relaxes every start to the tetrahedral basin.
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import run_cli
from loop_data import DEFECT, OCT_STARTS, TET_STARTS, write_h_search, write_wrong_model

from snb_ml.errors import InputError, OutputError
from snb_ml.loop.rounds import format_status, init_loop, run_round
from snb_ml.loop.standin import relax_folders
from snb_ml.loop.state import STATE_FILE, read_state, write_state

EMT = "ase.calculators.emt:EMT"
RELAX = {"fmax": 0.02, "steps": 300}
FIT = {"elements": ["H"]}
WIDE = {"min_energy_per_atom": -10.0, "max_energy_per_atom": 10.0}  # EMT energies are near zero


def start_loop(tmp_path, name="loop"):
    tree = write_h_search(tmp_path / "tree") if not (tmp_path / "tree").exists() else tmp_path / "tree"
    base = write_wrong_model(tmp_path / "wrong_H.json")
    init_loop(tree, tmp_path / name, "emt-fit", str(base), trainer_options=FIT, relax=RELAX, harvest=WIDE)
    return tree, tmp_path / name


def test_loop_learns_the_ground_state_with_fewer_dft_relaxations(tmp_path):
    tree, loop = start_loop(tmp_path)
    # "Relaxing every start": the DFT ground state and its cost.
    every = tmp_path / "every"
    shutil.copytree(tree, every)
    starts = list(TET_STARTS + OCT_STARTS)
    baseline = relax_folders(every, {DEFECT: starts}, EMT, fmax=RELAX["fmax"])[DEFECT]
    ground = min(baseline.values())
    assert min(baseline[s] for s in OCT_STARTS) == pytest.approx(ground)
    assert min(baseline[s] for s in TET_STARTS) > ground + 0.5  # two distinct basins

    first = run_round(loop)  # round 0: the base model screens, hands over
    assert first.index == 0 and (loop / first.dft_dir).is_dir()
    assert not set(first.handed_off[DEFECT]) & set(OCT_STARTS)
    before = (loop / STATE_FILE).read_bytes()
    with pytest.raises(InputError, match="not finished"):  # DFT jobs still running
        run_round(loop)
    assert (loop / STATE_FILE).read_bytes() == before

    records = [first]
    for _ in range(4):
        state = read_state(loop)
        if len(state.finished) == len(state.defects):
            break
        records.append(run_round(loop, dft=EMT))
    state = read_state(loop)
    assert len(state.finished) == 1
    # Round 1 harvested round 0's DFT: not the ground state (the round-0 model missed it) ...
    assert records[1].ground_state[DEFECT]["energy"] > ground + 0.5
    # ... the model fine-tuned in round 1 handed the octahedral basin over, and DFT found it there,
    # with fewer DFT relaxations than relaxing every start.
    assert records[-1].ground_state[DEFECT]["energy"] == pytest.approx(ground, abs=1e-3)
    assert DEFECT in records[2].ground_state_changed
    assert state.dft_count() < len(starts)
    assert records[1].error_before["force_mae"] > 5 * records[1].error_after["force_mae"]
    text = format_status(state)
    assert "Finished" in text and f"{state.dft_count()}" in text
    with pytest.raises(InputError, match="finished"):
        run_round(loop)


def _fake_dft(loop, structures: dict[str, object], energies: dict[str, float]):
    """Put finished CONTCAR + yaml results into a hand-off folder of the state (no relaxation)."""
    from ase.io import write

    state = read_state(loop)
    dft_dir = loop / "round_00" / "dft"
    for name, atoms in structures.items():
        (dft_dir / DEFECT / name).mkdir(parents=True, exist_ok=True)
        write(dft_dir / DEFECT / name / "POSCAR", atoms, format="vasp")
        write(dft_dir / DEFECT / name / "CONTCAR", atoms, format="vasp")
    document = {"distortions": {}}
    for name, energy in energies.items():
        if name == "Unperturbed":
            document["Unperturbed"] = energy
        else:
            document["distortions"][float(name.split("_")[-1].rstrip("%")) / 100] = energy
    (dft_dir / DEFECT / f"{DEFECT}.yaml").write_text(yaml.safe_dump(document))
    from snb_ml.loop.state import RoundRecord

    state.rounds.append(RoundRecord(index=0, handed_off={DEFECT: sorted(structures)}, dft_dir=str(dft_dir)))
    state.pending, state.pending_dir = {DEFECT: sorted(structures)}, str(dft_dir)
    write_state(state)


def test_one_frame_and_unknown_elements_keep_the_previous_model(tmp_path):
    from ase.io import read

    tree, loop = start_loop(tmp_path)
    start = read(tree / DEFECT / "Unperturbed" / "POSCAR")
    _fake_dft(loop, {"Unperturbed": start}, {"Unperturbed": 4.99})
    before = (loop / STATE_FILE).read_bytes()
    with pytest.raises(InputError, match="1 frame: fine-tuning needs at least two"):
        run_round(loop)
    assert (loop / STATE_FILE).read_bytes() == before
    assert read_state(loop).model is None  # still the base model

    other = tmp_path / "other"
    other.mkdir()
    _, loop2 = start_loop(other, "loop2")
    iron = start.copy()
    iron.symbols[0] = "Fe"  # EMT has no Fe parameters
    _fake_dft(loop2, {"Unperturbed": iron, "Bond_Distortion_-20.0%": start}, {"Unperturbed": 5.0,
              "Bond_Distortion_-20.0%": 4.99})  # fmt: skip
    before = (loop2 / STATE_FILE).read_bytes()
    with pytest.raises(InputError, match="contains Fe"):
        run_round(loop2)
    assert (loop2 / STATE_FILE).read_bytes() == before
    assert not (loop2 / "round_01" / "model").exists()


def test_dft_folder_twice_and_results_not_handed_off(tmp_path):
    from ase.io import read

    tree, loop = start_loop(tmp_path)
    start = read(tree / DEFECT / "Unperturbed" / "POSCAR")
    _fake_dft(loop, {"Unperturbed": start}, {"Unperturbed": 4.99})
    state = read_state(loop)
    state.dft = {DEFECT: {}}
    from snb_ml.loop.state import DftResult

    state.dft[DEFECT]["Unperturbed"] = DftResult(4.99, str(tmp_path / "elsewhere" / "Unperturbed"), 0)
    write_state(state)
    before = (loop / STATE_FILE).read_bytes()
    with pytest.raises(InputError, match="appears twice"):
        run_round(loop)
    state.dft = {}
    write_state(state)
    stray = loop / "round_00" / "dft" / DEFECT / "Bond_Distortion_10.0%"
    stray.mkdir()
    (stray / "CONTCAR").write_text(
        (loop / "round_00" / "dft" / DEFECT / "Unperturbed" / "CONTCAR").read_text()
    )
    with pytest.raises(InputError, match="not handed off by the loop"):
        run_round(loop)
    assert json.loads((loop / STATE_FILE).read_bytes())["rounds"] == json.loads(before)["rounds"]


def test_state_from_another_tree_or_folder_is_refused(tmp_path):
    tree, loop = start_loop(tmp_path)
    copy = tmp_path / "copied"
    copy.mkdir()
    shutil.copy(loop / STATE_FILE, copy / STATE_FILE)
    with pytest.raises(InputError, match="a copied state file"):
        read_state(copy)
    poscar = tree / DEFECT / "Bond_Distortion_10.0%" / "POSCAR"
    lines = poscar.read_text().splitlines()
    lines[-1] = " ".join(str(float(x) + 0.01) for x in lines[-1].split()[:3])
    poscar.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="not those this loop was started with"):
        run_round(loop)
    with pytest.raises(OutputError, match="already holds a loop"):
        init_loop(tree, loop, "emt-fit")
    with pytest.raises(OutputError, match="inside the ShakeNBreak tree"):
        init_loop(tree, tree / "loop", "emt-fit")


def test_standin_never_overwrites_dft_results(tmp_path):
    tree, _ = start_loop(tmp_path)
    folder = tree / DEFECT / "Unperturbed"
    (folder / "OUTCAR").write_text("real DFT\n")
    with pytest.raises(OutputError, match="never overwrites"):
        relax_folders(tree, {DEFECT: ["Bond_Distortion_10.0%", "Unperturbed"]}, EMT)
    assert (folder / "OUTCAR").read_text() == "real DFT\n"
    assert not (tree / DEFECT / "Bond_Distortion_10.0%" / "CONTCAR").exists()


def test_loop_cli_init_status_and_one_error(tmp_path):
    tree = write_h_search(tmp_path / "tree")
    init = ["snb-ml", "loop", "init", str(tree), "-o", str(tmp_path / "loop"), "--trainer", "emt-fit"]
    options = ["--option", 'elements=["H"]', "--fmax", "0.02", "--max-energy-per-atom", "10"]
    result = run_cli(init + options, tmp_path)
    assert result.returncode == 0, result.stderr
    state = read_state(tmp_path / "loop")
    assert state.trainer_options == {"elements": ["H"]} and state.relax == {"fmax": 0.02}
    result = run_cli(["snb-ml", "loop", "status", str(tmp_path / "loop")], tmp_path)
    assert result.returncode == 0 and "no round yet" in result.stdout
    result = run_cli(["snb-ml", "loop", "round", str(tmp_path)], tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("Error:") == 1 and "snb-ml loop init" in result.stderr
    assert "Traceback" not in result.stderr


def test_chgnet_trainer_refuses_one_frame_and_elements_beyond_its_table(tmp_path):
    from ase import Atoms

    from snb_ml.loop.trainers import get_trainer

    trainer = get_trainer("chgnet")

    def frame(symbols):
        atoms = Atoms(symbols, positions=[[0, 0, 0], [1.5, 1.5, 1.5]], cell=[4, 4, 4], pbc=True)
        atoms.info.update(REF_energy=-5.0, head="pbe", config_type="defect")
        atoms.arrays["REF_forces"] = np.zeros((2, 3))
        return atoms

    with pytest.raises(InputError, match="1 frame"):
        trainer.check_frames([frame("CdTe")], None)
    with pytest.raises(InputError, match="Cf"):  # Z = 98: CHGNet embeds up to 94
        trainer.check_frames([frame("CdTe"), frame("CfTe")], None)
    trainer.check_frames([frame("CdTe"), frame("CdTe")], None)
    with pytest.raises(InputError, match="Unknown loop trainer"):
        get_trainer("mace-loop")


def test_a_round_while_another_runs_is_refused_and_changes_nothing(tmp_path):
    from filelock import FileLock

    from snb_ml.loop.rounds import LOCK_FILE

    _, loop = start_loop(tmp_path)
    before = (loop / STATE_FILE).read_bytes()
    held = FileLock(str(loop / LOCK_FILE), timeout=0)  # what a running round holds
    held.acquire()
    try:
        with pytest.raises(OutputError, match="Another `snb-ml loop round` is running"):
            run_round(loop)
    finally:
        held.release()
    assert (loop / STATE_FILE).read_bytes() == before
    assert not (loop / "round_00").exists()
    record = run_round(loop)  # the lock is free again: the round runs
    assert record.index == 0 and (loop / "round_00").is_dir()
