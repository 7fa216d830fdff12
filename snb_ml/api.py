"""Python API for notebooks: relax a ShakeNBreak tree or distortion dictionary with one call."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError
from snb_ml.executors import run_with_executor
from snb_ml.relax import RelaxSettings
from snb_ml.runner import RunReport, run_tree
from snb_ml.safe_write import write_text
from snb_ml.settings import RunSettings
from snb_ml.summary import format_summary
from snb_ml.tree.layout import energies_document
from snb_ml.tree.metadata import charged_name
from snb_ml.tree.status import ENERGY_STATUSES


@dataclass
class DefectResult:
    """Relaxed structures and ML energies of one defect in one charge state.

    Attributes:
        name: Defect folder name, e.g. ``v_Cd_0``.
        charge: Defect charge.
        energies: ShakeNBreak-style energies (``{"distortions": {...}, "Unperturbed": E}``).
        structures: Relaxed pymatgen structures by distortion folder name.
        statuses: ``converged``/``unconverged``/``high_energy``/``exploded``/``error`` by folder.
        reused: True for distortions whose results came from an earlier run.
        directory: The defect's folder in the ML tree.
    """

    name: str
    charge: int | None
    energies: dict[str, Any]
    structures: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)
    directory: Path | None = None


@dataclass
class RelaxationResults:
    """What :func:`relax_tree` and :func:`relax_distortions` return."""

    ml_tree: Path
    defects: dict[str, DefectResult]
    report: RunReport

    def summary(self) -> str:
        """The same summary table the CLI prints."""
        return format_summary(self.report)


def _collect(report: RunReport) -> RelaxationResults:
    from pymatgen.core import Structure

    defects = {}
    for defect in report.defects:
        energies, structures, statuses, reused = {}, {}, {}, {}
        for folder, record in defect.records.items():
            statuses[folder] = record.status
            reused[folder] = record.skipped
            if record.energy is not None and record.status in ENERGY_STATUSES:
                energies[folder] = record.energy
            contcar = (defect.ml_directory or Path()) / record.result_folder / "CONTCAR"
            if contcar.is_file():
                structures[folder] = Structure.from_file(contcar)
        defects[defect.name] = DefectResult(
            name=defect.name,
            charge=defect.charge,
            energies=energies_document(energies),
            structures=structures,
            statuses=statuses,
            reused=reused,
            directory=defect.ml_directory,
        )
    return RelaxationResults(ml_tree=report.ml_tree, defects=defects, report=report)


def _settings(relaxer: str, model: str | None, kwargs: dict[str, Any]) -> RunSettings:
    relax_fields = set(RelaxSettings.__dataclass_fields__)
    relax_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in relax_fields}
    return RunSettings(relaxer=relaxer, model=model, relax=RelaxSettings(**relax_kwargs), **kwargs)


def relax_tree(
    path: str | Path = ".",
    relaxer: str = "chgnet",
    model: str | None = None,
    output: str | Path | None = None,
    defects: list[str] | None = None,
    executor: str = "local",
    scheduler: Any = None,
    **options: Any,
) -> RelaxationResults:
    """Relax a ShakeNBreak tree (written by ``snb-generate``) with an ML force field.

    Args:
        path: Top-level or single-defect ShakeNBreak folder.
        relaxer: Relaxer backend name.
        model: Model path/name for the backend.
        output: ML tree folder (default ``<top-level>/ml_tree``).
        defects: Defect folder names to relax (all if ``None``).
        executor: ``local`` (this process) or ``dask`` (one task per defect on a Dask cluster; the
            tree and the ML tree must be on a filesystem all workers see).
        scheduler: For ``dask``: a scheduler address (``"tcp://node01:8786"``), a
            ``distributed.Client`` or a cluster object such as ``distributed.LocalCluster``.
        **options: Any :class:`~snb_ml.settings.RunSettings` or :class:`~snb_ml.relax.RelaxSettings`
            field, e.g. ``fmax=0.02``, ``steps=300``, ``device="cuda"``, ``engine="batched"``,
            ``batch_size=32``, ``progress=False``.

    Returns:
        Relaxed structures, energies and the ML tree path.

    Example:
        >>> results = relax_tree("CdTe", relaxer="chgnet", fmax=0.02)  # doctest: +SKIP
        >>> results.defects["v_Cd_0"].energies  # doctest: +SKIP
    """
    settings = _settings(relaxer, model, dict(options))
    report = run_with_executor(
        path, settings, executor=executor, scheduler=scheduler, defects=defects, output=output
    )
    return _collect(report)


def write_distortion_tree(distortion_dict: dict, directory: str | Path, metadata: dict | None = None) -> Path:
    """Write ``Distortions.apply_distortions()`` output as a ShakeNBreak tree of POSCARs.

    Args:
        distortion_dict: ``{defect: {"charges": {q: {"structures": {"Unperturbed": S,
            "distortions": {"Bond_Distortion_-30.0%": S, ...}}}}}}``.
        directory: Where to write ``{defect}_{q}/{distortion}/POSCAR``.
        metadata: The distortion metadata returned alongside, written as ``distortion_metadata.json``
            at the top and in each defect folder (ShakeNBreak's plot labels and site analysis read it).

    Returns:
        The directory.
    """
    import json

    from pymatgen.io.vasp import Poscar

    directory = Path(directory)
    if metadata is not None:
        write_text(directory / "distortion_metadata.json", json.dumps(metadata, indent=2, default=str))
    for defect, entry in distortion_dict.items():
        if "charges" not in entry:
            raise InputError(
                f"Entry '{defect}' is not Distortions.apply_distortions() output (no 'charges' key)."
            )
        for charge, charge_entry in entry["charges"].items():
            structures = charge_entry["structures"]
            folder = directory / charged_name(defect, int(charge))
            if metadata is not None:
                write_text(folder / "distortion_metadata.json", json.dumps(metadata, indent=2, default=str))
            named = {"Unperturbed": structures["Unperturbed"], **structures.get("distortions", {})}
            for name, structure in named.items():
                label = name if isinstance(name, str) else f"Bond_Distortion_{round(name * 100, 1) + 0}%"
                write_text(
                    folder / label / "POSCAR", Poscar(structure, comment=f"{defect} {label}").get_str()
                )
    return directory


def relax_distortions(
    distortion_dict: dict | tuple,
    relaxer: str = "chgnet",
    model: str | None = None,
    output: str | Path = "ml_tree",
    **options: Any,
) -> RelaxationResults:
    """Relax the structures of ``Distortions.apply_distortions()`` and write them as an ML tree.

    Args:
        distortion_dict: What ``Distortions.apply_distortions()`` returns: the ``(structures,
            metadata)`` tuple (the metadata is then written to the ML tree), or just its first element.
        relaxer: Relaxer backend name.
        model: Model path/name for the backend.
        output: ML tree folder; rerunning with the same folder reuses finished relaxations.
        **options: As for :func:`relax_tree`.

    Returns:
        Relaxed structures, energies and the ML tree path.
    """
    metadata = None
    if isinstance(distortion_dict, tuple):
        distortion_dict, metadata = distortion_dict
    with tempfile.TemporaryDirectory(prefix="snb_ml_inputs_") as staging:
        write_distortion_tree(distortion_dict, staging, metadata)
        settings = _settings(relaxer, model, dict(options))
        report = run_tree(staging, settings, output=output, input_label="(in-memory Distortions dictionary)")
        return _collect(report)


def relax_defect_entries(
    defect_entries: Any,
    relaxer: str = "chgnet",
    model: str | None = None,
    output: str | Path = "ml_tree",
    distortion_options: dict[str, Any] | None = None,
    **options: Any,
) -> RelaxationResults:
    """Apply ShakeNBreak distortions to doped ``DefectEntry`` objects and relax them with an MLFF.

    Args:
        defect_entries: What ShakeNBreak's ``Distortions`` accepts: a list or dict of doped
            ``DefectEntry`` objects (e.g. ``DefectsGenerator(...)`` values).
        relaxer: Relaxer backend name.
        model: Model path/name for the backend.
        output: ML tree folder.
        distortion_options: Keyword arguments for ``shakenbreak.input.Distortions`` (e.g.
            ``bond_distortions=[-0.4, 0.0, 0.4]``).
        **options: As for :func:`relax_tree`.

    Returns:
        Relaxed structures, energies and the ML tree path.
    """
    from shakenbreak.input import Distortions

    distortions = Distortions(defect_entries, **(distortion_options or {}))
    distorted = distortions.apply_distortions(verbose=False)
    return relax_distortions(distorted, relaxer=relaxer, model=model, output=output, **options)
