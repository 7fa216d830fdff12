"""The status of one relaxation, as written in the provenance file and shown in the summary."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """Outcome of one distortion's relaxation.

    A ``str`` enum: members compare equal to (and serialise to JSON as) the plain strings that
    provenance files have always held, so files written before this enum existed read unchanged.
    """

    CONVERGED = "converged"
    UNCONVERGED = "unconverged"  # ran out of steps; continued from its CONTCAR on the next run
    HIGH_ENERGY = "high_energy"  # converged, but above Unperturbed by more than the threshold
    EXPLODED = "exploded"  # stopped by the guard (atoms collapsing or flying apart)
    ERROR = "error"  # the model or the input failed; nothing usable was written

    # Format and print as the plain value (``f"{Status.ERROR}"`` is ``"error"``), as str constants did.
    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        # Printed inside dicts and lists (``{"Unperturbed": 'converged'}``) as the value users know.
        return repr(self.value)

    @classmethod
    def parse(cls, value: str | None) -> Status | str:
        """The member for a stored value; an unknown value comes back as it is, a missing one as "unknown"."""
        if value is None:
            return "unknown"
        try:
            return cls(value)
        except ValueError:
            return value


#: Results that are final: reused as they are by the next run.
FINAL_STATUSES = (Status.CONVERGED, Status.HIGH_ENERGY, Status.EXPLODED)
#: Results whose energy goes into ``{defect}.yaml`` (``_High_Energy`` ones do not, as in ShakeNBreak).
ENERGY_STATUSES = (Status.CONVERGED, Status.UNCONVERGED)
#: Results without a usable relaxed structure.
UNUSABLE_STATUSES = (Status.ERROR, Status.EXPLODED)
