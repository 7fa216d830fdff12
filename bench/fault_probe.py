"""Fault and bad-input probe: what each fault of the reliability issue does today, as a user sees it.

Builds small real inputs in a temporary folder (ShakeNBreak trees written by ShakeNBreak's own
``Distortions.from_structures(...).write_vasp_files`` for V_Cu in 32- and 108-atom Cu, as the test
fixtures are; the trimmed real MgO OUTCAR of ``tests/data``), runs the real console scripts
(``snb-ml run``, ``select``, ``dataset``, ``free-energy``) in subprocesses with the EMT relaxer, and
checks after each fault that nothing was lost: sha256 of every file of the input tree and of the
other outputs before and after, no temporary (``.snb_ml_tmp_*``) file left, every JSON strict (no
NaN/Infinity). Three faults have no command line of their own and go through the Python API in a
subprocess: NaN and out-of-range free-energy terms (``FiniteTemperatureThermodynamics``), a disk
filling up (ENOSPC raised inside snb_ml's atomic writer after two CONTCARs, as ``tests/test_faults.py``
does; a real tiny filesystem needs root), and a high-energy threshold (``high_energy_threshold`` has
no CLI option; EMT's Cu minima all lie within 2 eV, so the probe sets -1 eV to make every distortion
"high" relative to Unperturbed).

Prints a markdown table (fault, command, exit code, the one-line message, nothing-lost checks, and
whether the behaviour is the one the issue asks for) and exits 1 if any row is not.

Usage::

    OMP_NUM_THREADS=1 python bench/fault_probe.py [--output table.md] [--keep DIR] [--only disk_full,...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
EMT = ["--relaxer", "ase", "--model", "ase.calculators.emt:EMT", "--no-progress", "--fmax", "0.05",
       "--threads", "1"]  # fmt: skip
D0, DM1 = "v_Cu_Oh_Cu2.55_0", "v_Cu_Oh_Cu2.55_-1"  # ShakeNBreak's names for V_Cu in fcc Cu
OUTCAR_GZ = REPO / "tests" / "data" / "vasp" / "MgO_tree"

GENERATE = """
import sys, warnings
from pymatgen.core import Lattice, Structure
from shakenbreak.input import Distortions
for n, out in ((2, "gen_32"), (3, "gen_108")):
    bulk = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]) * [n, n, n]
    defect = bulk.copy()
    defect.remove_sites([0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distortions = Distortions.from_structures(
            [defect], bulk=bulk, oxidation_states={"Cu": 1}, padding=1, bond_distortions=[-0.4, 0.0, 0.4]
        )
        distortions.write_vasp_files(output_path=out, verbose=False)
"""


@dataclass
class Row:
    """One fault tried: what was run, what came back, and the checks done afterwards."""

    item: str
    fault: str
    command: str = ""
    code: int | None = None
    message: str = ""
    checks: list[tuple[str, bool]] = field(default_factory=list)
    expect: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, label: str, ok: bool) -> None:
        self.checks.append((label, bool(ok)))

    def require(self, label: str, ok: bool) -> None:
        self.expect.append((label, bool(ok)))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self.checks + self.expect)


@dataclass
class Ran:
    command: str
    code: int
    out: str


class Probe:
    def __init__(self, root: Path):
        self.root = root
        self.rows: list[Row] = []
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}

    # ----- running ---------------------------------------------------------------------------------
    def case(self, name: str, tree: str | None = "gen_32") -> Path:
        """A fresh folder for one fault, holding a copy of a generated tree as ``tree``."""
        folder = self.root / name
        folder.mkdir()
        if tree:
            shutil.copytree(self.root / tree, folder / "tree")
        return folder

    def snb(self, case: Path, *args: str, timeout: int = 600) -> Ran:
        proc = subprocess.run(
            [str(BIN / "snb-ml"), *args],
            cwd=case,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        shown = "snb-ml " + shlex.join(args).replace(shlex.join(EMT), "$EMT")
        return Ran(shown, proc.returncode, self.clean(proc.stdout + proc.stderr, case))

    def python(self, case: Path, code: str, shown: str, timeout: int = 600) -> Ran:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=case,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Ran(shown, proc.returncode, self.clean(proc.stdout + proc.stderr, case))

    def clean(self, text: str, case: Path) -> str:
        for prefix in sorted({str(case.resolve()), str(case)}, key=len, reverse=True):
            text = text.replace(prefix + "/", "").replace(prefix, ".")
        return text

    def record(self, row: Row, ran: Ran, *patterns: str) -> None:
        row.command, row.code = ran.command, ran.code
        row.message = pick(ran.out, *patterns)
        row.check("no traceback", "Traceback" not in ran.out)
        self.rows.append(row)

    # ----- the faults ------------------------------------------------------------------------------
    def stale_other_size(self) -> None:
        row = Row("1", "tree regenerated in place from a 108-atom cell after a run on the 32-atom one")
        case = self.case("stale_size")
        self.snb(case, "run", "-p", "tree", "-d", D0, *EMT)
        for path in (case / "tree").iterdir():  # rm -r the generated folders, keep ml_tree; regenerate
            if path.name != "ml_tree":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in (self.root / "gen_108").iterdir():
            (shutil.copytree if path.is_dir() else shutil.copy)(path, case / "tree" / path.name)
        before = snapshot(case / "tree", skip="ml_tree")
        ran = self.snb(case, "run", "-p", "tree", "-d", D0, *EMT)
        self.record(row, ran, r"redone|reused")
        counts = {atoms(p) for p in (case / "tree" / "ml_tree" / D0).glob("*/CONTCAR")}
        row.require("exit 0", ran.code == 0)
        row.require(f"every ML CONTCAR has the new 107 atoms ({sorted(counts)})", counts == {107})
        row.require("0 reused", "0 reused" in ran.out)
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def stale_shared_output(self) -> None:
        row = Row("1", "two trees (32 and 108 atoms) sharing one -o")
        case = self.case("shared_o")
        shutil.copytree(self.root / "gen_108", case / "other")
        self.snb(case, "run", "-p", "tree", "-d", D0, "-o", "shared", *EMT)
        before, other = snapshot(case / "shared"), snapshot(case / "other")
        ran = self.snb(case, "run", "-p", "other", "-d", D0, "-o", "shared", *EMT)
        self.record(row, ran, r"Error")
        row.require("refused (exit != 0)", ran.code != 0)
        row.check("shared ML tree identical", snapshot(case / "shared") == before)
        row.check("other input tree identical", snapshot(case / "other") == other)
        self.tidy(row, case, None, None)

    def stale_charge(self) -> None:
        row = Row("1", "--charge 3, then a rerun without it")
        case = self.case("charge")
        self.snb(case, "run", "-p", "tree", "-d", D0, "--charge", "3", *EMT)
        before = snapshot(case / "tree", skip="ml_tree")
        ran = self.snb(case, "run", "-p", "tree", "-d", D0, *EMT)
        self.record(row, ran, r"charge changed")
        stored = read_json(case / "tree" / "ml_tree" / D0 / "snb_ml_provenance.json")
        charges = {d["charge"] for d in stored["distortions"].values()}
        row.require("exit 0, all redone", ran.code == 0 and "0 reused" in ran.out)
        row.require(
            f"provenance charge 0 everywhere ({sorted(charges)})", stored["charge"] == 0 and charges == {0}
        )
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def output_at_other_tree(self) -> None:
        row = Row("2", "-o at another ShakeNBreak input tree")
        case = self.case("o_other_tree")
        shutil.copytree(self.root / "gen_108", case / "B")
        before, other = snapshot(case / "tree"), snapshot(case / "B")
        ran = self.snb(case, "run", "-p", "tree", "-o", "B", *EMT)
        self.record(row, ran, r"Error")
        row.require("refused (exit != 0)", ran.code != 0)
        row.check("B (other tree) identical", snapshot(case / "B") == other)
        self.tidy(row, case, before, "tree")

    def output_inside(self, inside: str, label: str) -> None:
        row = Row("8", f"-o inside the input tree: {label}")
        case = self.case("o_inside_" + label.split()[0])
        before = snapshot(case / "tree")
        ran = self.snb(case, "run", "-p", "tree", "-o", f"tree/{inside}", *EMT)
        self.record(row, ran, r"Error")
        row.require("refused (exit != 0)", ran.code != 0)
        self.tidy(row, case, before, "tree")

    def high_energy_history(self) -> None:
        row = Row("3", "Unperturbed fails (empty POSCAR), is restored, rerun (threshold -1 eV, API)")
        case = self.case("high_energy")
        poscar = case / "tree" / D0 / "Unperturbed" / "POSCAR"
        text = poscar.read_text()
        code = (
            "import warnings; warnings.simplefilter('ignore')\n"
            "from snb_ml.api import relax_tree\n"
            f"r = relax_tree('tree', relaxer='ase', model='ase.calculators.emt:EMT', defects=['{D0}'],"
            " fmax=0.05, high_energy_threshold=-1.0, progress=False)\n"
            f"print('STATUSES', sorted(set(r.defects['{D0}'].statuses.values())))\n"
        )
        poscar.write_text("")
        first = self.python(case, code, "")
        poscar.write_text(text)
        before = snapshot(case / "tree", skip="ml_tree")
        shown = "relax_tree('tree', ..., high_energy_threshold=-1.0) twice, POSCAR emptied then restored"
        ran = self.python(case, code, shown)
        self.record(row, ran, r"judged again", r"STATUSES")
        ml = case / "tree" / "ml_tree" / D0
        folders = sorted(p.name for p in ml.iterdir() if p.is_dir())
        row.require("first run: others converged", "STATUSES ['converged', 'error']" in first.out)
        row.require("rerun: all distortions high_energy", "STATUSES ['converged', 'high_energy']" in ran.out)
        row.require(
            "folders renamed _High_Energy",
            all(f == "Unperturbed" or f.endswith("_High_Energy") for f in folders) and len(folders) == 4,
        )
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def missing_unperturbed(self) -> None:
        row = Row("3", "defect without an Unperturbed folder")
        case = self.case("no_unperturbed")
        shutil.rmtree(case / "tree" / D0 / "Unperturbed")
        before = snapshot(case / "tree")
        ran = self.snb(case, "run", "-p", "tree", "-d", D0, *EMT)
        self.record(row, ran, r"no Unperturbed")
        row.require(
            "warned, naming what it disables",
            "no Unperturbed folder" in ran.out and "_High_Energy" in ran.out,
        )
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def truncated_outcar(self) -> None:
        import gzip

        from ase.io import read

        row = Row("4", "OUTCAR cut inside `energy(sigma->0) =    -1331` of the last step")
        case = self.case("outcar", tree=None)
        shutil.copytree(OUTCAR_GZ, case / "vasp")
        source = case / "vasp" / "Mg_O_0" / "vasp_std" / "OUTCAR.gz"
        with gzip.open(source, "rt") as stream:
            text = stream.read()
        last = text.rindex("energy  without entropy=")
        end = text.index("energy(sigma->0) =", last) + len("energy(sigma->0) =    -1331")
        source.unlink()
        (source.parent / "OUTCAR").write_text(text[:end])
        (case / "OUTCAR_whole").write_text(text)  # ASE's reader on the whole file is the reference
        whole = [
            round(a.get_potential_energy(), 8) for a in read(case / "OUTCAR_whole", ":", format="vasp-out")
        ]
        before = snapshot(case / "vasp")
        ran = self.snb(
            case, "dataset", "vasp", "-o", "data", "--split", "frames", "--fractions", "1,0,0", "-q"
        )
        self.record(row, ran, r"[Ww]arn|dropped|incomplete|truncat", r"frames")
        energies = xyz_energies(case / "data" / "train.xyz", "Mg_O_0")
        row.require("exit 0", ran.code == 0)
        row.require(
            f"no -1331.0 label; Mg_O_0 labels = first 2 complete steps {energies}",
            -1331.0 not in energies and energies == whole[:2],
        )
        self.tidy(row, case, before, "vasp")

    def thermo_terms(self) -> None:
        base = (
            "import sys, math; sys.path.insert(0, 'TESTS')\n"
            "from doped_fixtures import build_nacl_thermo\n"
            "from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics as F\n"
            "thermo = build_nacl_thermo()\n"
        ).replace("TESTS", str(REPO / "tests"))
        for shown, call, pattern in (
            (
                "F.from_thermodynamics(nacl, terms={'v_Cl': {'vib': nan}})",
                "F.from_thermodynamics(thermo, terms={'v_Cl': {'vib': float('nan')}})",
                "finite",
            ),
            (
                "F.from_thermodynamics(nacl, terms={'v_Cl': {'vib': ([300, 600], [-0.1, -0.3])}})"
                ".get_equilibrium_concentrations(temperature=1500, fermi_level=0.4)",
                "F.from_thermodynamics(thermo, terms={'v_Cl': {'vib': ([300.0, 600.0], [-0.1, -0.3])}})"
                ".get_equilibrium_concentrations(temperature=1500, fermi_level=0.4)",
                "tabulated",
            ),
        ):
            row = Row(
                "5", "NaN free-energy term (API)" if "nan" in shown else "tabulated term outside its range"
            )
            case = self.case("thermo_" + pattern, tree=None)
            code = base + "try:\n    " + call + "\n    print('ACCEPTED')\n"
            code += "except Exception as error:\n"
            code += "    print(type(error).__name__ + ': ' + str(error))\n    sys.exit(1)\n"
            ran = self.python(case, code, shown)
            self.record(row, ran, pattern, "ACCEPTED")
            row.require("refused with defect and term named", ran.code != 0 and "'v_Cl'" in ran.out)
            self.tidy(row, case, None, None)

    def disk_full(self) -> None:
        row = Row("6", "disk full (ENOSPC injected in the atomic writer after 2 CONTCARs of one defect)")
        case = self.case("disk_full")
        before = snapshot(case / "tree")
        code = (
            "import contextlib, errno, sys\nfrom pathlib import Path\n"
            "import snb_ml.safe_write, snb_ml.tree.layout, snb_ml.tree.writer\n"
            "real = snb_ml.safe_write.atomic_path\n"
            "written = []\n@contextlib.contextmanager\ndef writer(target):\n    target = Path(target)\n"
            "    with real(target) as temporary:\n"
            f"        hit = '{D0}' in target.parts\n"
            "        if hit and target.name == 'CONTCAR':\n            written.append(target)\n"
            "        if hit and len(written) > 2:\n"
            "            raise OSError(errno.ENOSPC, 'No space left on device')\n        yield temporary\n"
            "for module in (snb_ml.safe_write, snb_ml.tree.writer, snb_ml.tree.layout):\n"
            "    module.atomic_path = writer\nfrom snb_ml.cli import main\n"
            f"main({['run', '-p', 'tree', *EMT]!r})\n"
        )
        ran = self.python(case, code, f"snb-ml run -p tree $EMT  (ENOSPC after 2 CONTCARs of {D0})")
        self.record(row, ran, r"Error for", r"No space")
        ml = case / "tree" / "ml_tree"
        kept = read_json(ml / D0 / "snb_ml_provenance.json")["distortions"]
        others = [
            read_json(p)["distortions"] for p in ml.glob("*/snb_ml_provenance.json") if p.parent.name != D0
        ]
        row.require("exit 1, no OSError traceback", ran.code == 1)
        row.require("path and 'No space' in the message", "No space left" in ran.out and f"{D0}" in ran.out)
        row.check(
            f"{len(kept)} written CONTCARs of {D0} intact",
            len(kept) == 2 and all((ml / D0 / f / "CONTCAR").stat().st_size > 0 for f in kept),
        )
        row.check(
            "other defects finished",
            len(others) == 2 and all(d["status"] == "converged" for o in others for d in o.values()),
        )
        again = self.snb(case, "run", "-p", "tree", *EMT)
        reused = len(kept) + sum(len(o) for o in others)
        row.check(
            f"rerun with space: exit 0, {reused} reused",
            again.code == 0 and f"{reused} reused" in again.out and "0 defect(s) with errors" in again.out,
        )
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def non_utf8(self) -> None:
        bad = b'{"defects": {"v_Cu\xff": {}}}'
        for where in ("top", "defect"):
            row = Row(
                "7", f"non-UTF-8 distortion_metadata.json ({'top level' if where == 'top' else 'one defect'})"
            )
            case = self.case("utf8_" + where)
            target = case / "tree" / ("" if where == "top" else D0) / "distortion_metadata.json"
            target.write_bytes(bad)
            before = snapshot(case / "tree")
            ran = self.snb(case, "run", "-p", "tree", *EMT)
            self.record(row, ran, r"not UTF-8")
            row.require("exit 1, one error naming the file", ran.code == 1 and "is not UTF-8 text" in ran.out)
            if where == "defect":
                finished = sorted(p.parent.name for p in (case / "tree" / "ml_tree").glob("*/*.yaml"))
                row.check(
                    f"other defects finished ({len(finished)})", D0 not in finished and len(finished) == 2
                )
            self.tidy(row, case, before, "tree", skip="ml_tree", planted=target)

    def free_energy(self) -> None:
        case = self.case("free_energy", tree=None)
        write = (
            "from ase.build import bulk\nfrom ase.io import write\n"
            "host = bulk('Cu', 'fcc', a=3.61, cubic=True)\nd = host.copy(); del d[0]\n"
            "write('POSCAR_bulk', host, format='vasp'); write('POSCAR_defect', d, format='vasp')\n"
            "write('POSCAR_Cu', bulk('Cu', 'fcc', a=3.61), format='vasp')\n"
            "write('POSCAR_Ag', bulk('Ag', 'fcc', a=4.09), format='vasp')\n"
            "write('POSCAR_Te', bulk('Te', 'sc', a=3.0), format='vasp')\n"
            "c = bulk('CdTe', 'zincblende', a=6.5, cubic=True); write('POSCAR_CdTe', c, format='vasp')\n"
            "del c[0]; write('POSCAR_V_Cd', c, format='vasp')\n"
            "write('POSCAR_Cd', bulk('Cd', 'hcp', a=3.0, c=5.6), format='vasp')\n"
        )
        self.python(case, write, "")
        emt = ["--relaxer", "ase", "--model", "ase.calculators.emt:EMT", "--threads", "1", "--tstep", "250"]
        cu = ["--defect", "POSCAR_defect", "--bulk", "POSCAR_bulk", "--reference", "Cu=POSCAR_Cu"]
        cases = [
            (
                "element the model lacks (EMT has no Cd, Te)",
                ["--defect", "POSCAR_V_Cd", "--bulk", "POSCAR_CdTe", "--reference", "Cd=POSCAR_Cd"],
                "cdte.json",
                r"not trained",
                "refused (exit 1), no file",
                lambda ran, out: ran.code == 1 and not out.exists(),
            ),
            (
                "element the model lacks, only in an unneeded --reference Te",
                [*cu, "--reference", "Te=POSCAR_Te"],
                "te.json",
                r"Te",
                "exit 0, Te warned about and not stored",
                lambda ran, out: ran.code == 0 and set(read_json(out)["references"]) == {"Cu"},
            ),
            (
                "--tmax nan",
                [*cu, "--tmax", "nan"],
                "nan.json",
                r"tmin|tmax",
                "refused (exit 1), no file",
                lambda ran, out: ran.code == 1 and not out.exists(),
            ),
            (
                "unneeded --reference Ag=...",
                [*cu, "--reference", "Ag=POSCAR_Ag"],
                "ag.json",
                r"Ag=",
                "exit 0, Ag warned about and not stored",
                lambda ran, out: ran.code == 0 and set(read_json(out)["references"]) == {"Cu"},
            ),
        ]
        for label, args, output, pattern, wanted, required in cases:
            row = Row("7", f"free-energy: {label}")
            before = snapshot(case)
            ran = self.snb(case, "free-energy", *args, "-o", output, *emt)
            self.record(row, ran, pattern, r"Error")
            row.message = row.message.replace(shlex.join(emt), "")
            row.command = row.command.replace(shlex.join(emt), "$EMT_FE")
            row.require(wanted, required(ran, case / output))
            after = snapshot(case)
            row.check("inputs identical", all(after.get(k) == v for k, v in before.items()))
            self.tidy(row, case, None, None)

    def non_finite_fmax(self) -> None:
        for value in ("nan", "inf"):
            row = Row("7", f"--fmax {value}")
            case = self.case("fmax_" + value)
            before = snapshot(case / "tree")
            ran = self.snb(case, "run", "-p", "tree", *EMT, "--fmax", value)
            self.record(row, ran, r"fmax")
            row.require(
                "refused (exit 1), no ML tree", ran.code == 1 and not (case / "tree" / "ml_tree").exists()
            )
            self.tidy(row, case, before, "tree")

    def killed_select(self) -> None:
        row = Row("9", "temporary PNG of a select killed by SIGKILL while writing its plot")
        case = self.case("killed_select")
        self.snb(case, "run", "-p", "tree", *EMT)
        ml = case / "tree" / "ml_tree"
        proc = subprocess.Popen(
            [str(BIN / "snb-ml"), "select", "-p", "tree/ml_tree"],
            cwd=case,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        caught, deadline = [], time.time() + 300
        while proc.poll() is None and time.time() < deadline and not caught:
            caught = [p for p in ml.rglob(".snb_ml_tmp_*") if ".png" in p.name]
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not caught:  # the plot was written between two polls: leave one as a killed select would
            caught = [ml / D0 / ".snb_ml_tmp_snb_ml_selection.png.k1ll3d"]
            caught[0].write_bytes(b"\x89PNG half")
        how = "caught by the kill" if "k1ll3d" not in caught[0].name else "planted (kill missed the write)"
        before = snapshot(case / "tree", skip="ml_tree")
        ran = self.snb(case, "select", "-p", "tree/ml_tree")
        row.fault += f": leftover {caught[0].name} {how}"
        self.record(row, ran, r"[Rr]emov|temporary", r"Error")
        row.message = row.message or f"(no message) leftover {caught[0].name} {how}"
        pngs = list(ml.glob("*/snb_ml_selection.png"))
        row.require("exit 0 and the leftover is gone", ran.code == 0 and not any(p.exists() for p in caught))
        row.require(
            "fresh PNGs are whole",
            bool(pngs) and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs),
        )
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def spaces(self) -> None:
        row = Row("9", "paths with spaces in the suggested snb-analyse/snb-plot commands")
        case = self.case("spaces", tree=None)
        shutil.copytree(self.root / "gen_32", case / "my project")
        ran = self.snb(case, "run", "-p", "my project", "-d", DM1, *EMT)
        self.record(row, ran, r"snb-analyse")
        line = row.message
        command = line.split("read it with: ")[-1].split(",")[0]
        words = shlex.split(command)
        row.require(
            f"shlex.split gives the ML tree ({words[-1]!r})",
            len(words) == 3 and (case / words[-1]).resolve() == (case / "my project" / "ml_tree").resolve(),
        )
        self.tidy(row, case, None, None)

    def undo(self) -> None:
        row = Row("9", "undo message after a hand-off run from inside a defect folder (relative paths)")
        case = self.case("undo")
        self.snb(case, "run", "-p", "tree", *EMT)
        before = snapshot(case / "tree", skip="ml_tree")
        inner = case / "tree" / D0
        self.snb(inner, "select", "-p", "../ml_tree", "--dft-tree", "..")
        ran = self.snb(inner, "select", "--undo", "--dft-tree", "..")
        ran.out = self.clean(ran.out, case)
        self.record(row, ran, r"Restored")
        row.require(
            "message names the tree, not '..'",
            ran.code == 0 and " in .. " not in ran.out and "in tree as before" in ran.out,
        )
        self.tidy(row, case, before, "tree", skip="ml_tree")

    def baseline(self) -> None:
        row = Row("-", "baseline: clean run (no fault)")
        case = self.case("baseline")
        before = snapshot(case / "tree")
        ran = self.snb(case, "run", "-p", "tree", *EMT)
        self.record(row, ran, r"relaxed this run")
        row.require("exit 0", ran.code == 0)
        self.tidy(row, case, before, "tree", skip="ml_tree")

    # ----- nothing lost ------------------------------------------------------------------------------
    def tidy(
        self,
        row: Row,
        case: Path,
        before: dict | None,
        tree: str | None,
        skip: str | None = None,
        planted: Path | None = None,
    ) -> None:
        """The checks every row gets: input tree unchanged, no temporary files, strict JSON.

        ``planted``: the damaged file the fault itself put there (not expected to be strict JSON).
        """
        if before is not None and tree is not None:
            after = snapshot(case / tree, skip=skip)
            row.check(
                f"input tree identical ({sum(v != 'dir' for v in before.values())} files)", after == before
            )
        row.check("no temp files", not [p for p in case.rglob(".snb_ml_tmp_*")])
        bad = [str(p.relative_to(case)) for p in case.rglob("*.json") if p != planted and not strict_json(p)]
        row.check("strict JSON" if not bad else f"non-strict JSON {bad}", not bad)


def snapshot(root: Path, skip: str | None = None) -> dict[str, str]:
    """sha256 of every file under ``root`` (``skip``: a top-level folder left out, e.g. the ML tree)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if not (skip and p.relative_to(root).parts[0] == skip)
    }


def strict_json(path: Path) -> bool:
    def refuse(constant):
        raise ValueError(constant)

    try:
        json.loads(path.read_text(), parse_constant=refuse)
    except ValueError:
        return False
    return True


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def atoms(poscar: Path) -> int:
    lines = poscar.read_text().splitlines()
    return sum(int(n) for n in lines[6].split())


def xyz_energies(path: Path, defect: str) -> list[float]:
    """REF_energy of every frame of ``defect`` in an extended XYZ file (in file order)."""
    from ase.io import read

    frames = [f for f in read(path, index=":") if defect in str(f.info["relaxation"])]
    return [round(float(f.info["REF_energy"]), 8) for f in sorted(frames, key=lambda f: f.info["frame"])]


def pick(text: str, *patterns: str) -> str:
    """The first line matching the patterns in order (or the last line of a traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in patterns:
        for line in lines:
            if re.search(pattern, line):
                return line
    return lines[-1] if lines else ""


def table(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = [
        "| # | fault | command | exit | message | nothing lost | as required |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lost = "; ".join(("" if ok else "FAILED: ") + label for label, ok in r.checks)
        wanted = "; ".join(("" if ok else "NOT: ") + label for label, ok in r.expect)
        verdict = ("yes: " if r.ok else "**NO**: ") + wanted
        out.append(
            f"| {r.item} | {cell(r.fault)} | `{cell(r.command)}` | {r.code} | {cell(r.message)} "
            f"| {cell(lost)} | {cell(verdict)} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help="Also write the markdown table here.")
    parser.add_argument("--keep", type=Path, help="Work in this (new) folder and keep it.")
    parser.add_argument("--only", help="Comma-separated faults to try (names as in main(); default: all).")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="snb_ml_fault_probe_"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        probe = Probe(root)
        generated = probe.python(root, GENERATE, "")
        if generated.code:
            print(generated.out, file=sys.stderr)
            return 2
        steps = {
            "baseline": probe.baseline,
            "stale_other_size": probe.stale_other_size,
            "stale_shared_output": probe.stale_shared_output,
            "stale_charge": probe.stale_charge,
            "output_at_other_tree": probe.output_at_other_tree,
            "o_distortion": lambda: probe.output_inside(f"{D0}/Bond_Distortion_40.0%", "distortion folder"),
            "o_defect": lambda: probe.output_inside(f"{D0}/ml", "defect subfolder"),
            "high_energy_history": probe.high_energy_history,
            "missing_unperturbed": probe.missing_unperturbed,
            "truncated_outcar": probe.truncated_outcar,
            "thermo_terms": probe.thermo_terms,
            "disk_full": probe.disk_full,
            "non_utf8": probe.non_utf8,
            "free_energy": probe.free_energy,
            "non_finite_fmax": probe.non_finite_fmax,
            "killed_select": probe.killed_select,
            "spaces": probe.spaces,
            "undo": probe.undo,
        }
        for name, step in steps.items():
            if args.only and name not in args.only.split(","):
                continue
            done = len(probe.rows)
            step()
            for row in probe.rows[done:]:
                print(
                    f"[{time.time() - start:4.0f} s] {row.fault}: exit {row.code}, ok={row.ok}",
                    file=sys.stderr,
                )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = table(probe.rows)
    text += (
        "\n\n`$EMT` = `" + shlex.join(EMT) + "`; `$EMT_FE` = `--relaxer ase --model ase.calculators.emt:EMT "
        f"--threads 1 --tstep 250`. {len(probe.rows)} faults, {sum(not r.ok for r in probe.rows)} not as "
        f"required; {time.time() - start:.0f} s.\n"
    )
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0 if all(r.ok for r in probe.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
