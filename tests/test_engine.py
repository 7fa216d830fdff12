"""The relaxation engine on fast ASE EMT / Morse systems."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential

from snb_ml.errors import InputError
from snb_ml.relax import CONVERGED, EXPLODED, UNCONVERGED, RelaxSettings, min_interatomic_distance, relax


def cu_vacancy(rattle=0.05, seed=1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    del atoms[0]
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "LBFGS"])
def test_converges_and_records_trajectory(optimizer):
    atoms = cu_vacancy()
    result = relax(atoms, EMT(), RelaxSettings(fmax=0.01, optimizer=optimizer, trajectory_frames=5))
    assert result.status == CONVERGED and result.converged
    assert result.max_force <= 0.01
    assert np.linalg.norm(result.atoms.get_cell() - atoms.get_cell()) == 0  # fixed cell
    assert result.energy < EMT().get_potential_energy(atoms)
    assert 2 <= len(result.frames) <= 5
    assert result.frames[0].info["step"] == 0 and result.frames[-1].info["step"] == result.steps
    for frame in result.frames:
        assert np.isfinite(frame.get_potential_energy())
        assert frame.get_forces().shape == (len(atoms), 3)
    # the input is untouched
    assert atoms.calc is None


def test_step_limit_gives_unconverged():
    result = relax(cu_vacancy(0.2), EMT(), RelaxSettings(fmax=1e-6, steps=3))
    assert result.status == UNCONVERGED and result.steps == 3
    assert "not converged" in result.message


def test_collapse_is_stopped_as_exploded():
    # A Morse well at 1.0 Å pulls the atoms together: a geometry that would not survive in DFT.
    atoms = cu_vacancy()
    calculator = MorsePotential(epsilon=5.0, r0=1.0, rho0=2.0, rcut1=3.0, rcut2=4.0)
    reference = min_interatomic_distance(atoms)
    result = relax(atoms, calculator, RelaxSettings(fmax=0.01, steps=500), reference_distance=reference)
    assert result.status == EXPLODED
    assert "apart" in result.message
    # The guard's limit: half the reference distance (the start is the reference, so 0.8 x start is larger).
    limit = 0.5 * reference
    assert f"limit {limit:.2f} Å" in result.message
    # It stopped at the step that crossed the limit, long before the step budget ran out.
    assert min_interatomic_distance(result.atoms) < limit < reference
    assert 0 < result.steps < 500


class NaNAfter(Calculator):
    """EMT that starts returning NaN forces after a few calls (a model blowing up mid-run)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, good_calls=3):
        super().__init__()
        self.good_calls = good_calls
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.emt.calculate(atoms, ["energy", "forces"], system_changes)
        self.results = dict(self.emt.results)
        self.good_calls -= 1
        if self.good_calls < 0:
            self.results["forces"] = np.full((len(atoms), 3), np.nan)


def test_nan_forces_are_detected():
    result = relax(cu_vacancy(0.2), NaNAfter(good_calls=3), RelaxSettings(fmax=1e-4))
    assert result.status == EXPLODED
    assert "non-finite" in result.message
    assert np.isnan(result.energy)
    assert np.isfinite(result.atoms.positions).all()


def test_energy_rise_guard():
    atoms = cu_vacancy()
    result = relax(atoms, EMT(), RelaxSettings(max_energy_rise=-1.0))  # any step "rises" above -1 eV
    assert result.status == EXPLODED and "rose" in result.message


def test_bad_settings_are_rejected():
    with pytest.raises(InputError, match="Unknown optimizer"):
        RelaxSettings(optimizer="GD")
    with pytest.raises(InputError, match="fmax"):
        RelaxSettings(fmax=0)
