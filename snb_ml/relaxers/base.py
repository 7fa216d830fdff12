"""The contract between snb_ml and a relaxer backend.

A backend is a *factory*: it receives a :class:`CalculatorRequest` and returns an ASE ``Calculator``
(or a :class:`LoadedModel` when it knows more, e.g. the model's elements or whether it reads the
defect charge). Every ASE optimizer, filter and constraint then works unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from snb_ml.errors import ModelError, SnbMlError

_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a model file, remembered per (path, size, mtime) so reloads cost nothing."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


@dataclass(frozen=True)
class CalculatorRequest:
    """What the user asked for; backends ignore the fields they do not use.

    Attributes:
        model: Model file path or model name (backend specific); ``None`` for the backend default.
        head: Readout head of a multi-head model.
        device: ``"cpu"`` or ``"cuda"`` (already resolved from ``"auto"``).
        dtype: Floating-point precision, ``"float32"`` or ``"float64"``; ``None`` for the default.
        options: Extra keyword arguments for the calculator (e.g. for the ``ase`` backend).
    """

    model: str | None = None
    head: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A ready calculator plus what snb_ml needs to know about it.

    Attributes:
        calculator: The ASE calculator.
        name: Human-readable model name recorded in the provenance file.
        version: Version of the package or model file that produced the energies.
        charge_aware: True when the model's energies depend on the charge state
            (``atoms.info["charge"]``), whatever the charge mode.
        supported_numbers: Atomic numbers the model can describe, or ``None`` if unknown.
        head: Readout head in use, if the model has several.
        charge_mode: How a charge-aware model sees the charge (``"site"``, ``"global"``,
            ``"intensive"``, see :mod:`snb_ml.models`), or ``None``.
        prepare_atoms: Optional hook the runner calls on each structure before relaxing it, after
            setting ``atoms.info["charge"]`` (int) and, when known, ``atoms.info["defect_site"]``
            (three Cartesian floats, Å). It writes whatever else the model reads (e.g. the per-atom
            ``atoms.arrays["defect_charge"]`` of ``site`` models), in place, once per relaxation, so
            the features stay fixed while atoms move. It raises :class:`ModelError` when the
            structure lacks what the model needs. ``None``: nothing to prepare.
        batch_evaluator: Optional ready evaluator of many structures per model call for the batched
            engine (see :class:`snb_ml.batch.BatchEvaluator`).
        batch_evaluator_factory: Optional ``factory(calculator) -> BatchEvaluator``, called when the
            batched engine needs one (the built-in CHGNet and MACE backends set theirs). With neither
            this nor ``batch_evaluator`` the calculator is evaluated one structure at a time.
        source: Absolute path of the model file the weights were read from, if the backend read one
            (for the provenance file); ``None`` for built-in weights.
        file_sha256: SHA-256 of that file (hex), so a rerun can tell whether the weights changed.
        fine_tuned_on: For a model ``snb-ml train`` fine-tuned: the defect folders (``Mg_O_+1``) whose
            DFT it was trained on (empty when the file does not say); ``None`` for foundation models
            and files from elsewhere. The selection explores defects a fine-tuned model never saw
            DFT of (:mod:`snb_ml.minima.trust`).
    """

    calculator: Any
    name: str
    version: str = "unknown"
    charge_aware: bool = False
    supported_numbers: frozenset[int] | None = None
    head: str | None = None
    charge_mode: str | None = None
    prepare_atoms: Callable[[Any], None] | None = None
    batch_evaluator: Any = None
    batch_evaluator_factory: Callable[[Any], Any] | None = None
    source: str | None = None
    file_sha256: str | None = None
    fine_tuned_on: tuple[str, ...] | None = None

    def file_record(self) -> dict[str, str | None] | None:
        """``{"path", "sha256"}`` of the model file for the provenance file, or ``None`` without one."""
        if self.source is None:
            return None
        return {"path": self.source, "sha256": self.file_sha256}

    def check_elements(self, symbols: Iterable[str], where: str) -> None:
        """Raise :class:`ModelError` if the model cannot describe every element in ``symbols``.

        Args:
            symbols: Chemical symbols of the structure to relax.
            where: Where the structure came from, for the message.
        """
        if self.supported_numbers is None:
            return
        from ase.data import atomic_numbers

        missing = sorted({s for s in symbols if atomic_numbers[s] not in self.supported_numbers})
        if missing:
            raise ModelError(
                f"Model '{self.name}' was not trained on {', '.join(missing)} (needed by {where}). "
                "Use a model that covers these elements (e.g. --relaxer chgnet, or --model PATH "
                "to a MACE model trained on them)."
            )


CalculatorFactory = Callable[[CalculatorRequest], Any]


@dataclass(frozen=True)
class RelaxerBackend:
    """A registered relaxer backend.

    Attributes:
        name: The name users pass to ``--relaxer``.
        factory: Callable turning a :class:`CalculatorRequest` into a calculator or :class:`LoadedModel`.
        description: One line shown by ``snb-ml plugins``.
        plugin: Name of the plugin (entry point) that registered it.
        distribution: Installed distribution providing the plugin, with its version.
    """

    name: str
    factory: CalculatorFactory
    description: str = ""
    plugin: str = ""
    distribution: str = ""

    def load(self, request: CalculatorRequest) -> LoadedModel:
        """Build the calculator for ``request`` and wrap it in a :class:`LoadedModel`.

        Args:
            request: What to load.

        Returns:
            The loaded model.

        Raises:
            ModelError: If the backend fails to build a calculator.
        """
        start = time.perf_counter()
        try:
            result = self.factory(request)
        except SnbMlError:
            raise
        except Exception as exc:
            raise ModelError(
                f"Relaxer '{self.name}' could not load its model ({type(exc).__name__}: {exc}). "
                "Check --model/--device/--dtype, or try --relaxer chgnet (offline default)."
            ) from exc
        if not isinstance(result, LoadedModel):
            result = LoadedModel(
                calculator=result,
                name=f"{self.name}:{type(result).__name__}",
                version=self.distribution or "unknown",
            )
        logging.getLogger(__name__).info(
            "loaded %s (%s) on %s in %.1f s",
            result.name,
            result.version,
            request.device,
            time.perf_counter() - start,
        )
        return result


DEVICE_NAMES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto, cpu, cuda or cuda:N (the GPU with index N, as torch numbers them)"


def check_device_name(device: str, allowed: tuple[str, ...] = DEVICE_NAMES) -> str:
    """Return ``device`` if it is one of ``allowed`` or ``cuda:N`` (N a non-negative integer).

    Args:
        device: The name given, e.g. ``"cuda:1"``.
        allowed: Plain names accepted besides ``cuda:N``.

    Raises:
        ModelError: For any other name (``"gpu"``, ``"cuda:"``, ``"cuda:-1"``, ``"cuda1"``).
    """
    if device in allowed:
        return device
    prefix, sep, index = str(device).partition(":")
    if prefix == "cuda" and sep and index.isdigit() and "cuda" in allowed:
        return device
    names = ", ".join(allowed) + (" or cuda:N (N = 0, 1, ...: the GPU index)" if "cuda" in allowed else "")
    raise ModelError(f"Unknown device '{device}'. Use {names}, e.g. --device cuda:1.")


def cuda_index(device: str) -> int | None:
    """The GPU index of ``cuda:N``, else ``None`` (``cpu``, ``cuda``, ``auto``)."""
    prefix, _, index = device.partition(":")
    return int(index) if prefix == "cuda" and index.isdigit() else None


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is visible to torch, else ``"cpu"``.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``"cuda:N"`` accepted).

    Returns:
        The concrete device name.

    Raises:
        ModelError: If CUDA is requested but not available, or the name is unknown.
    """
    check_device_name(device)
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise ModelError(
            f"--device {device} was requested but torch sees no CUDA GPU. Use --device cpu or auto, "
            "or install a CUDA build of torch."
        )
    index = cuda_index(device)
    if index is not None and index >= torch.cuda.device_count():
        raise ModelError(
            f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}). Pick one of those, or check CUDA_VISIBLE_DEVICES."
        )
    return device
