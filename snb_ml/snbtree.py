"""Former home of the ML-tree formats, kept importable: they now live in :mod:`snb_ml.tree`."""

from snb_ml.tree.layout import (
    DEFAULT_ML_TREE,
    DFT_OUTPUT_PATTERNS,
    DISTORTION_MARKERS,
    HIGH_ENERGY_SUFFIX,
    STRUCTURE_INPUTS,
    TRAJECTORY_FILE,
    TREE_MARKER,
    DefectInput,
    atomic_path,
    check_ml_defect_dir,
    check_output_location,
    dft_outputs,
    distortion_key,
    energies_document,
    input_structure_file,
    input_structure_hash,
    input_tree_identity,
    is_defect_dir,
    is_distortion_dir,
    load_json,
    locate_defects,
    read_input_structure,
    write_energies_yaml,
    write_tree_marker,
)
from snb_ml.tree.metadata import (
    METADATA_FILE,
    charge_from_folder,
    defect_site_fractional,
    read_metadata,
    split_charge,
)
from snb_ml.tree.provenance import PROVENANCE_FILE


def parse_charge(defect: DefectInput) -> int:
    """The charge of a defect (see :func:`snb_ml.tree.metadata.charge_from_folder`)."""
    return charge_from_folder(defect.directory, defect.name)


__all__ = [
    "DEFAULT_ML_TREE",
    "DFT_OUTPUT_PATTERNS",
    "DISTORTION_MARKERS",
    "HIGH_ENERGY_SUFFIX",
    "METADATA_FILE",
    "PROVENANCE_FILE",
    "STRUCTURE_INPUTS",
    "TRAJECTORY_FILE",
    "TREE_MARKER",
    "DefectInput",
    "atomic_path",
    "check_ml_defect_dir",
    "check_output_location",
    "defect_site_fractional",
    "dft_outputs",
    "distortion_key",
    "energies_document",
    "input_structure_file",
    "input_structure_hash",
    "input_tree_identity",
    "is_defect_dir",
    "is_distortion_dir",
    "load_json",
    "locate_defects",
    "parse_charge",
    "read_input_structure",
    "read_metadata",
    "split_charge",
    "write_energies_yaml",
    "write_tree_marker",
]
