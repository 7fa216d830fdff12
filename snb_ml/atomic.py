"""Former name of :mod:`snb_ml.safe_write` (crash-safe file writes), kept importable."""

from snb_ml.safe_write import TEMP_PREFIX, atomic_path, remove_stale_temporaries, write_text

__all__ = ["TEMP_PREFIX", "atomic_path", "remove_stale_temporaries", "write_text"]
