"""The ML tree's file formats, each with one owner.

- :mod:`snb_ml.tree.layout`: ShakeNBreak trees and ML trees (folders, structure inputs, ``{defect}.yaml``,
  the tree marker, where an ML tree may be written).
- :mod:`snb_ml.tree.metadata`: ShakeNBreak's ``distortion_metadata.json`` and the charge of a defect folder.
- :mod:`snb_ml.tree.provenance`: ``snb_ml_provenance.json`` (typed records, read and write).
- :mod:`snb_ml.tree.status`: the status of one relaxation.
"""

from snb_ml.tree.metadata import DefectMetadata, find_defect_metadata
from snb_ml.tree.provenance import DistortionRecord, Provenance, read_provenance, write_provenance
from snb_ml.tree.status import Status

__all__ = [
    "DefectMetadata",
    "DistortionRecord",
    "Provenance",
    "Status",
    "find_defect_metadata",
    "read_provenance",
    "write_provenance",
]
