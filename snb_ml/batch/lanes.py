"""Lanes: a CPU batch split over threads, each part evaluated with one intra-op thread.

One 64-atom model call is too small to keep two cores busy (most of its operations are too short to
split), independent structures are not. Each lane runs on its own Python thread; torch releases the
GIL inside its operations, and the intra-op thread count is set per OS thread, so the caller's own
setting is left as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ase import Atoms

# Two lanes of one 63-atom cell each beat one call with two threads by ~10 % on 2 cores; smaller
# lanes drown in per-call overhead.
MIN_LANE_ATOMS = 48

LaneEvaluation = Callable[[list[int], "int | None"], tuple[np.ndarray, list[np.ndarray]]]


def lane_count(device: str, requested: int | None, structures: list[Atoms]) -> int:
    """How many lanes to use for ``structures``.

    Args:
        device: The model's device; a GPU always gets one lane.
        requested: A fixed number of lanes, or ``None`` for one per torch thread, each with at
            least :data:`MIN_LANE_ATOMS` atoms.
        structures: The batch.
    """
    if str(device) != "cpu":
        return 1
    if requested is not None:
        return max(1, min(requested, len(structures)))
    import torch

    atoms = sum(len(s) for s in structures)
    return max(1, min(torch.get_num_threads(), len(structures), atoms // MIN_LANE_ATOMS))


def split_into_lanes(structures: list[Atoms], lanes: int) -> list[list[int]]:
    """Indices of ``structures`` in ``lanes`` groups of similar atom counts (largest first, greedy)."""
    groups: list[list[int]] = [[] for _ in range(lanes)]
    loads = [0] * lanes
    for index in sorted(range(len(structures)), key=lambda i: -len(structures[i])):
        lightest = loads.index(min(loads))
        groups[lightest].append(index)
        loads[lightest] += len(structures[index])
    return [sorted(group) for group in groups if group]


def evaluate_in_lanes(
    structures: list[Atoms], lanes: list[list[int]], evaluate_lane: LaneEvaluation
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Evaluate each lane on its own thread; return energies and forces in the order of ``structures``.

    Args:
        structures: The batch.
        lanes: Indices of each lane's structures (from :func:`split_into_lanes`).
        evaluate_lane: ``evaluate_lane(indices, threads)`` evaluates the structures at ``indices``;
            ``threads`` is the intra-op thread count to set on the calling thread (``None``: leave it).
    """
    if len(lanes) == 1:
        return evaluate_lane(lanes[0], None)
    import torch

    threads = max(1, torch.get_num_threads() // len(lanes))
    pool = _lane_pool(len(lanes))
    futures = [pool.submit(evaluate_lane, lane, threads) for lane in lanes]
    energies = np.empty(len(structures))
    forces: list[np.ndarray] = [np.empty(0)] * len(structures)
    for lane, future in zip(lanes, futures, strict=True):
        lane_energies, lane_forces = future.result()
        for slot, index in enumerate(lane):
            energies[index], forces[index] = lane_energies[slot], lane_forces[slot]
    return energies, forces


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _lane_pool(lanes: int) -> ThreadPoolExecutor:
    # One pool for the process, grown when a batch needs more lanes (the lane count falls as
    # structures converge; a pool per count would leave idle threads behind).
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < lanes:
            # The old pool is not shut down: another thread may still submit to it; its idle
            # threads exit once it is garbage-collected.
            _pool, _pool_size = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="snb_ml-lane"), lanes
        return _pool
