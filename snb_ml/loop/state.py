"""The loop's state file, ``snb_ml_loop.json``: the one record of a screen -> DFT -> learn project.

This module alone reads and writes it (atomically: a crash leaves the previous state). It holds where
the project lives (the loop folder and the ShakeNBreak tree, with a fingerprint of the tree's starts),
the trainer and its options, every DFT result harvested so far, the current model, the DFT hand-off
that is waiting for results, and one :class:`RoundRecord` per finished round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError, OutputError
from snb_ml.safe_write import write_text
from snb_ml.tree.layout import is_distortion_dir

STATE_FILE = "snb_ml_loop.json"
FORMAT = "snb_ml_loop/1"


@dataclass
class DftResult:
    """One harvested DFT relaxation: its final energy (eV) and folder, and the round that harvested it."""

    energy: float
    folder: str
    round: int


@dataclass
class RoundRecord:
    """What one round did.

    Attributes:
        index: Round number (0: the first screen, before any DFT).
        harvested: Defect -> distortions whose DFT results this round harvested.
        dft_total: DFT relaxations harvested so far (all rounds, all defects).
        error_before: The previous model's errors on the newly harvested DFT data, before training on
            it (out of sample); ``None`` without new data.
        error_after: The new model's errors on the same data (in sample).
        model: The model this round relaxed with (``None``: the trainer's base model).
        ground_state: Defect -> ``{"distortion", "energy"}``: lowest DFT energy found so far.
        ground_state_changed: Defects whose lowest DFT energy went down this round.
        handed_off: Defect -> distortions handed to DFT by this round.
        dft_dir: The DFT folder to run (``None`` when nothing was handed off).
        seconds: Wall time of each step (harvest, train, relax, select, total).
        notes: Why defects were finished, what was dropped.
    """

    index: int
    harvested: dict[str, list[str]] = field(default_factory=dict)
    dft_total: int = 0
    error_before: dict[str, Any] | None = None
    error_after: dict[str, Any] | None = None
    model: str | None = None
    ground_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    ground_state_changed: list[str] = field(default_factory=list)
    handed_off: dict[str, list[str]] = field(default_factory=dict)
    dft_dir: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class LoopState:
    """The whole state of one loop project (see the module docstring)."""

    loop_dir: str
    tree: str
    tree_fingerprint: str
    defects: list[str]
    trainer: str
    base_model: str | None = None
    trainer_options: dict[str, Any] = field(default_factory=dict)
    relax: dict[str, Any] = field(default_factory=dict)
    harvest: dict[str, Any] = field(default_factory=dict)
    policy: str = "protect"
    model: str | None = None
    dft: dict[str, dict[str, DftResult]] = field(default_factory=dict)
    pending: dict[str, list[str]] = field(default_factory=dict)
    pending_dir: str | None = None
    finished: list[str] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)

    @property
    def next_round(self) -> int:
        """Index of the round ``snb-ml loop round`` runs next."""
        return len(self.rounds)

    def dft_count(self) -> int:
        """DFT relaxations harvested so far."""
        return sum(len(results) for results in self.dft.values())

    def to_json(self) -> dict[str, Any]:
        """Plain data (what the file holds)."""
        return {"format": FORMAT, **asdict(self)}


def tree_fingerprint(tree: Path, defects: list[str]) -> str:
    """sha256 over the starting-structure files of the given defects (names and bytes)."""
    digest = hashlib.sha256()
    for defect in sorted(defects):
        for folder in sorted(p for p in (tree / defect).iterdir() if is_distortion_dir(p)):
            for name in ("POSCAR",):
                path = folder / name
                if path.is_file():
                    digest.update(f"{defect}/{folder.name}/{name}".encode())
                    digest.update(path.read_bytes())
    return digest.hexdigest()


def state_path(loop_dir: str | Path) -> Path:
    """The state file of a loop folder."""
    return Path(loop_dir) / STATE_FILE


def write_state(state: LoopState) -> None:
    """Write the state atomically (temporary file + rename)."""
    write_text(state_path(state.loop_dir), json.dumps(state.to_json(), indent=2) + "\n")


def read_state(loop_dir: str | Path, check_tree: bool = True) -> LoopState:
    """Read and check a loop's state.

    Args:
        loop_dir: The loop folder (holding ``snb_ml_loop.json``).
        check_tree: Also check that the ShakeNBreak tree still holds the same starts.

    Raises:
        InputError: No state file, not a loop state, a state written for another loop folder (copied),
            or a tree whose starts changed.
    """
    loop_dir = Path(loop_dir).resolve()
    path = state_path(loop_dir)
    if not path.is_file():
        raise InputError(f"{loop_dir} holds no {STATE_FILE}; start a loop there with `snb-ml loop init`.")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {path} ({exc}); it was not written by snb-ml loop.") from exc
    if not isinstance(document, dict) or document.pop("format", None) != FORMAT:
        raise InputError(f"{path} is not an snb-ml loop state (no format '{FORMAT}').")
    try:
        dft = {
            defect: {name: DftResult(**result) for name, result in results.items()}
            for defect, results in document.pop("dft", {}).items()
        }
        rounds = [RoundRecord(**record) for record in document.pop("rounds", [])]
        state = LoopState(**document, dft=dft, rounds=rounds)
    except TypeError as exc:
        raise InputError(f"{path} is not an snb-ml loop state of this version ({exc}).") from exc
    if Path(state.loop_dir) != loop_dir:
        raise InputError(
            f"{path} belongs to the loop in {state.loop_dir}, not to {loop_dir} (a copied state file). Run "
            "the loop from its own folder, or start a new one here with `snb-ml loop init`."
        )
    if check_tree:
        tree = Path(state.tree)
        if not tree.is_dir():
            raise InputError(
                f"The ShakeNBreak tree {tree} of this loop is gone; restore it or start a new loop."
            )
        if tree_fingerprint(tree, state.defects) != state.tree_fingerprint:
            raise InputError(
                f"The starts in {tree} are not those this loop was started with (its state file belongs to "
                "another tree, or the tree was regenerated). Start a new loop with `snb-ml loop init`."
            )
    return state


def new_state(loop_dir: Path, tree: Path, defects: list[str], **options: Any) -> LoopState:
    """Create the state of a new loop (not yet written).

    Raises:
        OutputError: ``loop_dir`` already holds a loop.
    """
    loop_dir, tree = loop_dir.resolve(), tree.resolve()
    if state_path(loop_dir).exists():
        raise OutputError(
            f"{loop_dir} already holds a loop ({STATE_FILE}); continue it with `snb-ml loop round`, or "
            "choose another folder (nothing was overwritten)."
        )
    return LoopState(
        loop_dir=str(loop_dir),
        tree=str(tree),
        tree_fingerprint=tree_fingerprint(tree, defects),
        defects=sorted(defects),
        **options,
    )
