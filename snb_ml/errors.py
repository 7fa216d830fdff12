"""Exceptions whose messages say what went wrong, where, and how to fix it."""


class SnbMlError(Exception):
    """Base class for every error snb_ml raises on purpose (the CLI prints these without a traceback)."""


class InputError(SnbMlError):
    """A ShakeNBreak tree, structure file or option cannot be used as given."""


class ModelError(SnbMlError):
    """A relaxer backend or its model cannot be loaded or cannot handle the structure."""


class UnknownRelaxerError(SnbMlError):
    """No installed plugin registers a relaxer of the requested name."""


class OutputError(SnbMlError):
    """The ML tree cannot be written safely (permissions, DFT files, another run holding the lock)."""
