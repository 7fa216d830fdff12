"""The screen -> DFT -> learn loop (``snb-ml loop``): state file, trainers, rounds, a DFT stand-in."""

from snb_ml.loop.rounds import format_status, init_loop, run_round
from snb_ml.loop.state import LoopState, RoundRecord, read_state
from snb_ml.loop.trainers import get_trainer, register_trainer, trainer_names

__all__ = [
    "LoopState",
    "RoundRecord",
    "format_status",
    "get_trainer",
    "init_loop",
    "read_state",
    "register_trainer",
    "run_round",
    "trainer_names",
]
