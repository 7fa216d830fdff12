"""Ground-state recall: score a model + selection against a finished ShakeNBreak DFT search."""

from snb_ml.recall.benchmark import benchmark_search
from snb_ml.recall.dft_search import DftDefect, DftSearch, DftStart, read_dft_search
from snb_ml.recall.results import TOLERANCE, DefectRecall, RecallResult, StartResult

__all__ = [
    "TOLERANCE",
    "DefectRecall",
    "DftDefect",
    "DftSearch",
    "DftStart",
    "RecallResult",
    "StartResult",
    "benchmark_search",
    "read_dft_search",
]
