"""DFT datasets for training: harvesting VASP trees (``snb-ml dataset``), picking hybrid single points."""

from snb_ml.data.filters import FilterSettings
from snb_ml.data.harvest import HarvestReport, HarvestSettings, harvest, write_dataset

__all__ = ["FilterSettings", "HarvestReport", "HarvestSettings", "harvest", "write_dataset"]
