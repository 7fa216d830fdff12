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
from snb_ml.minima.selection import (
    DEFAULT_THRESHOLD,
    SELECTION_FILE,
    SELECTION_PLOT,
    DefectSelection,
    SelectedCluster,
    TreeSelection,
    select_defect,
    select_tree,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "SELECTION_FILE",
    "SELECTION_PLOT",
    "Cluster",
    "DefectFingerprinter",
    "DefectSelection",
    "DefectSite",
    "SelectedCluster",
    "SoapParameters",
    "TreeSelection",
    "cluster_minima",
    "cosine_distance",
    "distance_matrix",
    "identify_defect_site",
    "select_defect",
    "select_tree",
]
