"""Which starts reach the DFT ground state in published ShakeNBreak searches; what exploration rules keep.

Data: the DFT energies ({defect}.yaml) of real ShakeNBreak searches: bench/data/dft_energies (ShakeNBreak's
test data, MIT: V_Cd0 in CdTe with three rattle amplitudes, V_O+1 in SrCu2O2, V_O0 in CeO2, V_Ca0 in
Ca2SnS4, V_O0 in rutile TiO2 with two spin constraints, In_Cd+1 in CdTe) and doped's MgO search (Mg_O,
five charges; --mgo, default ../shared/data/snb_dft/MgO_SnB). Entries "<x>_from_<other>" (starts seeded
from another charge state's ground state) are not part of the generated grid and are left out.

For every search, a start "reaches the ground state" when its DFT energy is within --tolerance of the
lowest. A rule "keeps" the ground state when one of its starts (or Unperturbed, which the hand-off
always relaxes) reaches it. The rule of snb_ml (snb_ml.minima.trust.exploration_starts) is compared with
alternatives of the same cost. Usage:

    python bench/exploration_rule.py [--mgo PATH] [--tolerance 0.05]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import yaml

from snb_ml.minima.trust import bond_distortion, exploration_starts

DATA = Path(__file__).parent / "data" / "dft_energies"


def folder_name(key) -> str:
    if isinstance(key, float | int):
        return f"Bond_Distortion_{round(float(key) * 100, 1) + 0}%"
    return str(key)


def load(path: Path) -> dict[str, float]:
    document = yaml.safe_load(path.read_text())
    energies = {folder_name(k): float(v) for k, v in (document.get("distortions") or {}).items()}
    energies = {k: v for k, v in energies.items() if "_from_" not in k}
    if "Unperturbed" in document:
        energies["Unperturbed"] = float(document["Unperturbed"])
    return energies


def searches(mgo: Path) -> dict[str, dict[str, float]]:
    found = {p.stem: load(p) for p in sorted(DATA.glob("*.yaml"))}
    if mgo.is_dir():
        for folder in sorted(mgo.iterdir()):
            if (folder / f"{folder.name}.yaml").is_file():
                found[f"MgO_{folder.name}"] = load(folder / f"{folder.name}.yaml")
    else:
        print(f"(MgO search not found at {mgo}; pass --mgo)")
    return found


def side_pick(folders, rule):
    """Alternative rules of the same cost: one start per side of the bond-distortion range."""
    values = {bond_distortion(f): f for f in folders if bond_distortion(f) is not None}
    picks = []
    for side in ([v for v in values if v < 0], [v for v in values if v > 0]):
        if not side:
            continue
        if rule == "extremes":
            picks.append(values[max(side, key=abs)])
        elif rule == "smallest":
            picks.append(values[min(side, key=abs)])
        elif rule == "middle, ties to larger":
            low, high = min(map(abs, side)), max(map(abs, side))
            mid = (low + high) / 2
            picks.append(values[min(side, key=lambda v: (round(abs(abs(v) - mid) * 100, 2), -abs(v)))])
        elif rule.startswith("fixed"):
            target = float(rule.split()[1]) / 100
            picks.append(values[min(side, key=lambda v: (round(abs(abs(v) - target) * 100, 2), abs(v)))])
    motifs = [f for f in folders if f.startswith(("Dimer", "Rattled"))]
    return picks + motifs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mgo", type=Path, default=Path("../shared/data/snb_dft/MgO_SnB"))
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    data = searches(args.mgo)
    rules = ["snb_ml", "middle, ties to larger", "fixed 30", "fixed 40", "extremes", "smallest"]
    kept = {rule: 0 for rule in rules}
    cost = {rule: 0 for rule in rules}
    random_expected = 0.0
    print(
        f"| search | starts | reach the DFT ground state (within {args.tolerance} eV) | snb_ml picks | kept |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, energies in data.items():
        lowest = min(energies.values())
        ground = {f for f, e in energies.items() if e - lowest <= args.tolerance}
        folders = list(energies)
        for rule in rules:
            picks = (
                [f for f, _ in exploration_starts(folders, [])]
                if rule == "snb_ml"
                else side_pick(folders, rule)
            )
            kept[rule] += bool(ground & (set(picks) | {"Unperturbed"}))
            cost[rule] += len(picks)
        picks = [f for f, _ in exploration_starts(folders, [])]
        # Same number of starts drawn at random from the grid (Unperturbed always relaxed).
        others = [f for f in folders if f != "Unperturbed"]
        draws = list(itertools.combinations(others, min(len(picks), len(others))))
        random_expected += sum(bool(ground & (set(d) | {"Unperturbed"})) for d in draws) / len(draws)
        short = sorted((f.replace("Bond_Distortion_", "") for f in ground), key=lambda s: (s[0].isalpha(), s))
        shown = ", ".join(short) if len(short) < 14 else f"{len(short)} starts"
        hit = bool(ground & (set(picks) | {"Unperturbed"}))
        picked = ", ".join(p.replace("Bond_Distortion_", "") for p in picks)
        print(f"| {name} | {len(energies)} | {shown} | {picked} | {'yes' if hit else 'NO'} |")
    print()
    print("| rule | ground state kept | extra DFT runs (all searches) |")
    print("| --- | --- | --- |")
    for rule in rules:
        print(f"| {rule} | {kept[rule]} of {len(data)} | {cost[rule]} |")
    expected = f"{random_expected:.1f} of {len(data)}"
    print(f"| same number of random starts (expected) | {expected} | {cost['snb_ml']} |")


if __name__ == "__main__":
    main()
