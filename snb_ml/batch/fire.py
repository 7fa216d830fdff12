"""FIRE for one structure, step for step as ASE's ``ase.optimize.FIRE`` with its default parameters.

The batched engine keeps one :class:`FireState` per structure, so a structure follows the same path it
would follow in the sequential engine (given the same forces), while the model sees the whole batch.
"""

from __future__ import annotations

import numpy as np


class FireState:
    """Velocity, time step and mixing of one FIRE relaxation (ASE 3.23+ defaults)."""

    dt_max = 1.0
    n_min = 5
    f_inc = 1.1
    f_dec = 0.5
    a_start = 0.1
    f_a = 0.99
    max_step = 0.2

    def __init__(self) -> None:
        self.velocity: np.ndarray | None = None
        self.dt = 0.1
        self.a = 0.1
        self.n_steps = 0

    def step(self, positions: np.ndarray, forces: np.ndarray) -> np.ndarray:
        """Return the new positions after one FIRE step.

        Args:
            positions: Current Cartesian positions, shape (N, 3).
            forces: Forces at ``positions``, shape (N, 3), eV/Å.

        Returns:
            The updated positions (a new array).
        """
        force = forces.ravel()
        if self.velocity is None:
            self.velocity = np.zeros_like(force)
        else:
            power = np.vdot(force, self.velocity)
            if power > 0.0:
                self.velocity = (1.0 - self.a) * self.velocity + self.a * force / np.sqrt(
                    np.vdot(force, force)
                ) * np.sqrt(np.vdot(self.velocity, self.velocity))
                if self.n_steps > self.n_min:
                    self.dt = min(self.dt * self.f_inc, self.dt_max)
                    self.a *= self.f_a
                self.n_steps += 1
            else:
                self.velocity[:] *= 0.0
                self.a = self.a_start
                self.dt *= self.f_dec
                self.n_steps = 0
        self.velocity += self.dt * force
        displacement = self.dt * self.velocity
        norm = np.sqrt(np.vdot(displacement, displacement))
        if norm > self.max_step:
            displacement = self.max_step * displacement / norm
        return positions + displacement.reshape(positions.shape)
