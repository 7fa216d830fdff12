"""Example fingerprint plugin "rdf": Gaussian-smeared distances from the defect centre to its neighbours."""

import numpy as np

from snb_ml import hookimpl


def rdf_fingerprint(species, site, soap, include_neighbours=False):
    """Return ``atoms -> vector``: distances from the defect, smeared by soap.sigma, up to soap.r_cut."""
    grid = np.linspace(0.5, soap.r_cut, 64)

    def fingerprint(atoms):
        centre = atoms.cell.cartesian_positions(site.frac_coords)
        if site.atom_index is not None:  # follow the defect atom (substitution, interstitial)
            centre = atoms.positions[site.atom_index]
        scaled = np.linalg.solve(atoms.cell.array.T, (atoms.positions - centre).T).T  # minimum image
        distances = np.linalg.norm((scaled - np.round(scaled)) @ atoms.cell.array, axis=1)
        near = distances[(distances > 0.1) & (distances < soap.r_cut)]
        return np.exp(-((grid[:, None] - near[None, :]) ** 2) / (2 * soap.sigma**2)).sum(axis=1)

    return fingerprint


@hookimpl
def register_fingerprints(register):
    """Register ``--fingerprint rdf``."""
    register("rdf", rdf_fingerprint, description="radial distribution around the defect (example plugin)")
