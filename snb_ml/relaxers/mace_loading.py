"""Loading MACE model files: the one place that imports mace and reads ``.model`` files.

The MACE relaxer backend, the charge-embedding graft (:mod:`snb_ml.models.mace_charge`) and training
(:mod:`snb_ml.training`) all load MACE models through here.
"""

from __future__ import annotations

from typing import Any

from snb_ml.errors import ModelError
from snb_ml.logs import quiet_import
from snb_ml.relaxers import mace_foundations as foundations
from snb_ml.relaxers.base import file_sha256
from snb_ml.relaxers.mace_foundations import OFFLINE_HELP

__all__ = ["damaged_cache_file", "file_sha256", "import_mace", "load_torch_model"]


def import_mace() -> Any:
    """Import mace (and its ASE calculators) and return the module; call before anything imports e3nn."""
    # mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD before e3nn is imported (e3nn then warns about it) and
    # prints a cuequivariance note to stdout: both go to the log (shown with -v).
    with quiet_import("mace"):
        import mace
        import mace.calculators  # noqa: F401

    return mace


def damaged_cache_file(foundation: str, path: str, problem: str) -> ModelError:
    """The error for a cached foundation-model file that cannot be used, with how to fix it."""
    return ModelError(
        f"The cached file of MACE foundation model '{foundation}' is damaged: {path} {problem}. Delete it "
        f"(rm '{path}') and run again to download it afresh. {foundations.by_hand(foundation)} {OFFLINE_HELP}"
    )


def load_torch_model(path: str, device: str, foundation: str | None = None) -> Any:
    """Read a MACE ``.model`` file into a torch module.

    Args:
        path: The ``.model`` file (as written by ``mace_run_train``).
        device: Torch device to map the weights to, e.g. ``"cpu"``.
        foundation: The foundation model this cached file is, if any (changes the error message).

    Raises:
        ModelError: If the file cannot be read or holds no MACE model.
    """
    import_mace()
    import torch

    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        if foundation is not None:
            problem = f"cannot be read ({type(exc).__name__}: {exc})"
            raise damaged_cache_file(foundation, path, problem) from exc
        raise ModelError(
            f"Could not read MACE model file '{path}' ({type(exc).__name__}: {exc}). Check that it is a "
            f"model saved by MACE (e.g. from mace_run_train). {OFFLINE_HELP}"
        ) from exc
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers"):
        if foundation is not None:
            raise damaged_cache_file(foundation, path, f"holds a {type(model).__name__}, not a MACE model")
        raise ModelError(
            f"'{path}' holds a {type(model).__name__}, not a MACE model (a training checkpoint or state "
            f"dict?). Pass the .model file that mace_run_train writes. {OFFLINE_HELP}"
        )
    return model
