"""The end-of-run summary table."""

from __future__ import annotations

import shlex

from tabulate import tabulate

from snb_ml.runner import RunReport
from snb_ml.tree.status import Status


def summary_rows(report: RunReport) -> list[list]:
    """One row per distortion: defect, distortion, ΔE vs Unperturbed, status, steps, seconds."""
    rows = []
    for defect in report.defects:
        reference = defect.unperturbed_energy
        for folder, record in defect.records.items():
            delta = ""
            if record.energy is not None and reference is not None:
                delta = f"{record.energy - reference:+.3f}"
            status = record.status + (" (cached)" if record.skipped else "")
            note = record.message[:80] if record.status != Status.CONVERGED else ""
            seconds = "-" if record.skipped else f"{record.seconds:.1f}"  # no time spent this run
            rows.append([defect.name, folder, delta, status, record.steps, seconds, note])
        if defect.error:  # after the rows of what it did finish (e.g. a disk that filled up halfway)
            rows.append([defect.name, "-", "", "error", "", "", defect.error[:80]])
    return rows


def format_summary(report: RunReport) -> str:
    """Render the run as a table followed by totals."""
    rows = summary_rows(report)
    table = tabulate(
        rows,
        headers=["defect", "distortion", "E - E_Unperturbed (eV)", "status", "steps", "seconds", "note"],
        tablefmt="simple",
        disable_numparse=True,  # keep "+0.000" rather than "-0"
    )
    records = [r for d in report.defects for r in d.records.values()]
    relaxed = [r for r in records if not r.skipped and r.status != Status.ERROR]
    converged = sum(r.status == Status.CONVERGED for r in records)
    per_relaxation = sum(r.seconds for r in relaxed) / len(relaxed) if relaxed else 0.0
    timing = f"{per_relaxation:.1f} s per relaxation"
    if report.engine == "batched" and relaxed:
        # A batch member's own seconds overlap the others'; the wall time shared out is the cost.
        timing = f"{report.seconds / len(relaxed):.1f} s of wall time per relaxation (batched engine)"
    memory = f", peak memory {report.peak_memory / 1e9:.1f} GB resident" if report.peak_memory else ""
    quoted = shlex.quote(str(report.ml_tree))  # pasted into a shell: paths with spaces stay one word
    lines = [
        table,
        "",
        f"Model: {report.model['name']} ({report.model['version']})",
        f"{len(relaxed)} relaxed this run, {sum(r.skipped for r in records)} reused, "
        f"{converged}/{len(records)} converged, "
        f"{sum(d.failed for d in report.defects)} defect(s) with errors; "
        f"{timing}, {report.seconds:.0f} s in total{memory}.",
        f"ML tree: {report.ml_tree}  (read it with: snb-analyse -p {quoted}, snb-plot -p {quoted})",
    ]
    return "\n".join(lines)
