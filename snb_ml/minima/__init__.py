"""Structure-based selection of the distinct ML minima of each defect for DFT."""

from snb_ml.minima.clustering import Cluster, cluster_minima
from snb_ml.minima.fingerprints import (
    DefectFingerprinter,
    DefectSite,
    SoapParameters,
    cosine_distance,
    distance_matrix,
    identify_defect_site,
)
from snb_ml.minima.results import DefectSelection, ExtraStart, SelectedCluster, TreeSelection
from snb_ml.minima.selection import (
    DEFAULT_THRESHOLD,
    SELECTION_FILE,
    SELECTION_PLOT,
    select_defect,
    select_tree,
)
from snb_ml.minima.trust import POLICIES, TrustFlag, TrustReport, assess_minima, exploration_starts

__all__ = [
    "DEFAULT_THRESHOLD",
    "POLICIES",
    "SELECTION_FILE",
    "SELECTION_PLOT",
    "Cluster",
    "DefectFingerprinter",
    "DefectSelection",
    "DefectSite",
    "ExtraStart",
    "SelectedCluster",
    "SoapParameters",
    "TreeSelection",
    "TrustFlag",
    "TrustReport",
    "assess_minima",
    "cluster_minima",
    "cosine_distance",
    "distance_matrix",
    "exploration_starts",
    "identify_defect_site",
    "select_defect",
    "select_tree",
]
