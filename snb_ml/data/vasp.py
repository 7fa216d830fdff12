"""Reading VASP outputs: every ionic step of OUTCAR / vasprun.xml files, with charge and functional.

Energy convention: ``REF_energy`` is VASP's ``energy(sigma->0)``, what ``ase.io.read`` returns as the
``energy`` of an OUTCAR or vasprun.xml frame, what ShakeNBreak's ``snb-parse`` writes to ``{defect}.yaml``
and what pymatgen / doped use as the final energy (``e_0_energy``). The ``free energy TOTEN`` (ASE's
``free_energy``) is kept as ``REF_free_energy``. Forces are in eV/Å, stress in eV/Å^3 with ASE's sign
convention (positive = tensile; VASP's ``in kB`` line times -0.1 GPa).
"""

from __future__ import annotations

import contextlib
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

from snb_ml.errors import InputError

GGA_NAMES = {
    "PE": "pbe",
    "PS": "pbesol",
    "91": "pw91",
    "RP": "rpbe",
    "RE": "revpbe",
    "AM": "am05",
    "CA": "lda",
}
_NUMBERED = re.compile(r"^(OUTCAR|vasprun\.xml)(?:[._-]?(\d+))?(?:\.gz)?$")


class UnreadableFile(Exception):
    """A VASP output file that is truncated, corrupt or holds no complete ionic step."""


def open_text(path: Path):
    """Open a plain or gzipped text file for reading."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", errors="replace")
    return open(path, errors="replace")


def output_files(folder: Path) -> list[Path]:
    """VASP output files of one calculation folder, oldest run first.

    OUTCARs are used when present (vasprun.xml only otherwise, so no step is counted twice). Numbered
    copies (``OUTCAR_1``, ``OUTCAR.2``, ``OUTCAR_1.gz``) are earlier runs of a restarted relaxation, in
    increasing number; the plain ``OUTCAR`` (or ``OUTCAR.gz``) is the latest run. When both ``OUTCAR``
    and ``OUTCAR.gz`` exist, the uncompressed one is used.
    """
    found: dict[str, dict[int, Path]] = {"OUTCAR": {}, "vasprun.xml": {}}
    for path in folder.iterdir():
        match = _NUMBERED.match(path.name)
        if not match or not path.is_file():
            continue
        stem, number = match.group(1), match.group(2)
        rank = int(number) if number is not None else 10**9  # the unnumbered file is the latest run
        previous = found[stem].get(rank)
        if previous is None or previous.name.endswith(".gz"):
            found[stem][rank] = path
    chosen = found["OUTCAR"] or found["vasprun.xml"]
    return [chosen[rank] for rank in sorted(chosen)]


def read_incar(folder: Path) -> dict[str, str]:
    """INCAR tags of ``folder`` (upper-case keys, raw string values; comments dropped); {} if absent."""
    incar = folder / "INCAR"
    if not incar.is_file():
        return {}
    tags: dict[str, str] = {}
    for raw in incar.read_text(errors="replace").splitlines():
        line = raw.split("#")[0].split("!")[0]
        for statement in line.split(";"):
            if "=" in statement:
                key, value = statement.split("=", 1)
                tags[key.strip().upper()] = value.strip()
    return tags


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().strip(".").upper().startswith("T")


def fidelity(tags: dict[str, str]) -> str:
    """Fidelity (head) name of a calculation from its INCAR-style tags.

    ``hse`` if ``LHFCALC`` is true (any hybrid), else the ``METAGGA`` name lower-cased (``r2scan``), else
    the ``GGA`` tag mapped to a name (``PE`` -> ``pbe``, ``PS`` -> ``pbesol``); no tag means the POTCAR's
    functional, taken to be ``pbe`` (PAW_PBE potentials).
    """
    if _is_true(tags.get("LHFCALC")):
        return "hse"
    metagga = (tags.get("METAGGA") or "").strip().strip(".").upper()
    if metagga and metagga not in ("F", "FALSE", "NONE", "--"):
        return metagga.lower()
    gga = (tags.get("GGA") or "").strip().upper()
    if not gga or gga == "--":
        return "pbe"
    return GGA_NAMES.get(gga[:2], gga.lower())


@dataclass
class OutcarInfo:
    """What the OUTCAR text says beyond ASE's frames: electrons, functional, convergence per step."""

    nelect: float | None = None
    zvals: list[float] = field(default_factory=list)
    ions_per_type: list[int] = field(default_factory=list)
    nelm: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    unconverged_steps: set[int] = field(default_factory=set)
    complete: bool = False
    complete_steps: int | None = None

    @property
    def neutral_electrons(self) -> float | None:
        """Valence electrons of the neutral cell: sum of ZVAL times ions per species."""
        if not self.zvals or len(self.zvals) != len(self.ions_per_type):
            return None
        return sum(z * n for z, n in zip(self.zvals, self.ions_per_type, strict=True))


# The energy line closing an ionic step, whole: a file cut inside it would give a truncated number.
_STEP_ENERGY = re.compile(r"^\s*energy\s+without entropy=\s*\S+\s+energy\(sigma->0\)\s*=\s*[-+.\dEe]+\s*\n$")
_HEADER_TAGS = re.compile(r"^\s+(GGA|LHFCALC|METAGGA|NELM)\s*=\s*([^\s;]+)")
_ITERATION = re.compile(r"Iteration\s+(\d+)\(\s*(\d+)\)")


def scan_outcar(path: Path) -> OutcarInfo:
    """Read electron counts, functional tags and per-step electronic convergence from an OUTCAR.

    An ionic step counts as electronically unconverged when it ran ``NELM`` electronic iterations without
    VASP's ``aborting loop because EDIFF is reached`` line, or VASP 6 wrote ``EDIFF was not reached``.

    An ionic step counts as complete (``complete_steps``) only with its whole block: the forces table up
    to its ``total drift`` line, the ``FREE ENERGIE OF THE ION-ELECTRON SYSTEM`` energy lines, and the
    step's closing ``LOOP+`` timing line. A file cut anywhere inside a step (a killed job, a full disk)
    loses that step rather than giving a truncated energy.

    Raises:
        UnreadableFile: If the file cannot be decompressed or read.
    """
    info = OutcarInfo(complete_steps=0)
    ionic, iterations, converged = 0, 0, False
    forces = in_forces = final_energy = energy = False

    def close_step() -> None:
        if ionic and not converged and info.nelm is not None and iterations >= info.nelm:
            info.unconverged_steps.add(ionic - 1)

    try:
        with open_text(path) as stream:
            for line in stream:
                if "Iteration" in line:
                    match = _ITERATION.search(line)
                    if match:
                        step = int(match.group(1))
                        if step != ionic:
                            close_step()
                            ionic, converged = step, False
                        iterations = int(match.group(2))
                        continue
                if "TOTAL-FORCE" in line:
                    in_forces = True
                elif in_forces and "total drift" in line:
                    forces, in_forces = True, False
                elif "FREE ENERGIE OF THE ION-ELECTRON SYSTEM" in line:
                    final_energy = True
                elif final_energy and "energy(sigma->0)" in line:
                    energy, final_energy = bool(_STEP_ENERGY.match(line)), False
                elif "LOOP+" in line:
                    info.complete_steps += forces and energy and line.endswith("\n")
                    forces = in_forces = final_energy = energy = False
                if "aborting loop" in line:
                    if "EDIFF was not reached" in line or "unconverged" in line:
                        info.unconverged_steps.add(ionic - 1)
                    elif "EDIFF is reached" in line:
                        converged = True
                elif ionic == 0:
                    _scan_header_line(line, info)
                elif "General timing" in line:
                    info.complete = True
            close_step()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UnreadableFile(f"{path}: {type(exc).__name__}: {exc}") from exc
    return info


def _scan_header_line(line: str, info: OutcarInfo) -> None:
    if "NELECT" in line and "total number of electrons" in line:
        info.nelect = float(line.split("=")[1].split()[0])
    elif line.lstrip().startswith("ZVAL") and "=" in line and "mass and valenz" not in line:
        info.zvals = [float(value) for value in line.split("=")[1].split()]
    elif "ions per type" in line:
        info.ions_per_type = [int(value) for value in line.split("=")[1].split()]
    else:
        match = _HEADER_TAGS.match(line)
        if match and match.group(1) not in info.tags:
            if match.group(1) == "NELM":
                info.nelm = int(match.group(2).rstrip(";,"))
            info.tags[match.group(1)] = match.group(2).rstrip(";,")


def read_outcar_frames(path: Path, complete_steps: int | None = None) -> list:
    """Every complete ionic step of an OUTCAR as ASE Atoms with a single-point calculator.

    Args:
        path: The OUTCAR (plain or gzipped).
        complete_steps: Steps :func:`scan_outcar` found complete; later ones are dropped (ASE also
            reads a step whose energy line is cut short). ``None``: scan the file here.

    Raises:
        UnreadableFile: If ASE cannot parse it or it holds no complete ionic step.
    """
    from ase.io import read

    if complete_steps is None:
        complete_steps = scan_outcar(path).complete_steps
    try:
        frames = read(str(path), index=":", format="vasp-out")[:complete_steps]
    except Exception as exc:
        raise UnreadableFile(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise UnreadableFile(f"{path}: no complete ionic step")
    return frames


def read_vasprun(path: Path) -> tuple[list, OutcarInfo]:
    """Frames and electron/functional information of a vasprun.xml (plain or gzipped).

    Electronic convergence is not checked for vasprun.xml files (their per-step SCF count is not compared
    with NELM); truncated files keep the ionic steps ASE can read.

    Raises:
        UnreadableFile: If the file holds no readable ionic step.
    """
    from ase.io import read

    info = OutcarInfo(complete=True)
    try:
        frames = read(str(path), index=":", format="vasp-xml")
    except Exception as exc:
        raise UnreadableFile(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise UnreadableFile(f"{path}: no complete ionic step")
    try:
        with open_text(path) as stream:
            text = stream.read()
    except (OSError, EOFError) as exc:
        raise UnreadableFile(f"{path}: {type(exc).__name__}: {exc}") from exc
    match = re.search(r'<i[^>]*name="NELECT"[^>]*>\s*([-\d.Ee+]+)', text)
    info.nelect = float(match.group(1)) if match else None
    for tag in ("GGA", "LHFCALC", "METAGGA"):
        found = re.search(rf'<i[^>]*name="{tag}"[^>]*>\s*([^<\s]+)', text)
        if found:
            info.tags[tag] = found.group(1)
    block = re.search(r'<array name="atomtypes">(.*?)</array>', text, re.S)
    if block:
        for row in re.findall(r"<rc>(.*?)</rc>", block.group(1), re.S):
            cells = re.findall(r"<c>\s*(.*?)\s*</c>", row)
            if len(cells) >= 4:
                info.ions_per_type.append(int(cells[0]))
                info.zvals.append(float(cells[3]))
    return frames, info


def charge_from_electrons(info: OutcarInfo, incar: dict[str, str], source: Path) -> int:
    """Total charge q = neutral electrons (ZVAL x ions per species) - NELECT.

    NELECT comes from the output file (what VASP used), else from the folder's INCAR.

    Raises:
        InputError: If NELECT or the ZVALs are missing, or q is not an integer.
    """
    nelect = info.nelect
    if nelect is None and "NELECT" in incar:  # an INCAR may have been edited after this run
        with contextlib.suppress(ValueError):
            nelect = float(incar["NELECT"].split()[0])
    neutral = info.neutral_electrons
    if nelect is None or neutral is None:
        raise InputError(
            f"Cannot determine the charge of {source}: "
            + ("no NELECT in the INCAR or the output" if nelect is None else "no POTCAR ZVAL / ions per type")
            + ". Rerun VASP with a complete OUTCAR header or add NELECT to the INCAR."
        )
    charge = neutral - nelect
    if abs(charge - round(charge)) > 1e-3:
        raise InputError(
            f"{source}: NELECT = {nelect} and {neutral} valence electrons give a non-integer charge "
            f"{charge:+.4f}; fractional charges are not supported."
        )
    return int(round(charge))
