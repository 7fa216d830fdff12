"""MACE-MP foundation models by name: the catalogue, mace-torch's cache, and one safe download.

The names, URLs and cache location are mace-torch's own (``mace.calculators.foundations_models``,
``mace.tools.utils.get_cache_dir``): a file that ``mace_mp()`` or ``mace_run_train --foundation_model``
downloaded is reused here, and a file downloaded here is reused by them. The download itself is
snb_ml's: mace-torch 0.3.16 renames its ``.part`` file into place without checking the length
against ``Content-Length`` and only rejects an HTML error page *after* renaming it, so a dropped
connection or an error page could leave a damaged file in the cache. Here the file is streamed to a
temporary sibling, checked, and only then renamed (:func:`snb_ml.safe_write.atomic_path`).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from snb_ml.errors import ModelError
from snb_ml.logs import quiet_import
from snb_ml.progress import progress_bar
from snb_ml.safe_write import atomic_path

OFFLINE_ENV = "SNB_ML_OFFLINE"

DEFAULT_FOUNDATION = "medium-mpa-0"
"""What ``--relaxer mace`` uses without ``--model``: mace-torch's own default (``mace_mp()`` with no
model, ``download_mace_mp_checkpoint(None)``). Chosen because it is mace-torch's default, MIT licensed;
no project benchmark compares foundation models on defects yet."""

DOWNLOAD_TIMEOUT_S = 120  # per socket read, as mace-torch's own downloader

OFFLINE_HELP = (
    "Ways out: pass --model PATH to a MACE .model file already on disk, or use the offline default "
    "--relaxer chgnet."
)


@dataclass(frozen=True)
class Foundation:
    """What mace-torch's documentation says about one foundation model.

    Attributes:
        model: The model's published name.
        trained_on: Training data set(s).
        theory: Level of theory of the training labels.
        licence: Licence of the weights.
        note: Anything else worth knowing when choosing.
    """

    model: str
    trained_on: str
    theory: str
    licence: str
    note: str = ""


# From mace-torch 0.3.16: names from ``mace_mp_urls``; data, theory and licence from its README table
# "Latest Recommended Foundation Models". The 0b and 0b2 releases are not in that table; the README
# says MACE-MP models are trained on MPtrj, and ``mace_mp`` says they are MIT licensed (the source
# flags only the OMAT and MATPES files as ASL).
CATALOGUE: dict[str, Foundation] = {
    "small": Foundation("MACE-MP-0a small", "MPtrj", "PBE+U", "MIT", "initial release"),
    "medium": Foundation("MACE-MP-0a medium", "MPtrj", "PBE+U", "MIT", "mace-torch's default before 0.3.10"),
    "large": Foundation("MACE-MP-0a large", "MPtrj", "PBE+U", "MIT", "initial release"),
    "small-0b": Foundation("MACE-MP-0b small", "MPtrj", "PBE+U", "MIT"),
    "medium-0b": Foundation("MACE-MP-0b medium", "MPtrj", "PBE+U", "MIT"),
    "small-0b2": Foundation("MACE-MP-0b2 small", "MPtrj", "PBE+U", "MIT"),
    "medium-0b2": Foundation("MACE-MP-0b2 medium", "MPtrj", "PBE+U", "MIT"),
    "large-0b2": Foundation("MACE-MP-0b2 large", "MPtrj", "PBE+U", "MIT"),
    "medium-0b3": Foundation(
        "MACE-MP-0b3 medium", "MPtrj", "PBE+U", "MIT", "improved high-pressure stability, reference energies"
    ),
    "medium-mpa-0": Foundation(
        "MACE-MPA-0 medium", "MPtrj + sAlex", "PBE+U", "MIT", "default (mace-torch's and snb_ml's)"
    ),
    "small-omat-0": Foundation("MACE-OMAT-0 small", "OMAT", "PBE+U (VASP 54)", "ASL"),
    "medium-omat-0": Foundation("MACE-OMAT-0 medium", "OMAT", "PBE+U (VASP 54)", "ASL"),
    "mace-matpes-pbe-0": Foundation("MACE-MATPES-PBE-0", "MATPES-PBE", "PBE (no +U)", "ASL"),
    "mace-matpes-r2scan-0": Foundation("MACE-MATPES-r2SCAN-0", "MATPES-r2SCAN", "r2SCAN", "ASL"),
    "mh-0": Foundation(
        "MACE-MH-0", "OMAT/OMOL/OC20/MATPES", "PBE/r2SCAN/wB97M-VV10", "ASL", "multi-head: choose --head"
    ),
    "mh-1": Foundation(
        "MACE-MH-1", "OMAT/OMOL/OC20/MATPES", "PBE/r2SCAN/wB97M-VV10", "ASL", "multi-head: choose --head"
    ),
}

_UNDESCRIBED = Foundation("?", "not described by snb_ml: see mace-torch's README", "?", "?")


def offline() -> bool:
    """True when ``SNB_ML_OFFLINE`` forbids downloads (any value but empty/0/false/no)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _mace_foundations() -> ModuleType:
    """``mace.calculators.foundations_models``, imported without mace's import-time chatter."""
    # mace prints a note about cuequivariance to stdout on import, and makes e3nn warn about
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; neither says anything about the model asked for.
    with quiet_import("mace"):
        from mace.calculators import foundations_models

    return foundations_models


def _mace(attribute: str) -> Any:
    return getattr(_mace_foundations(), attribute)


def foundation_names() -> list[str]:
    """The MACE-MP foundation names the installed mace-torch knows (``mace_mp_names``), in its order."""
    return [name for name in _mace("mace_mp_names") if name]


def describe(name: str) -> Foundation:
    """What is known about foundation ``name`` (a placeholder for names newer than this catalogue)."""
    return CATALOGUE.get(name, _UNDESCRIBED)


def url(name: str) -> str:
    """The download URL mace-torch uses for foundation ``name``."""
    return _mace("mace_mp_urls")[name]


def cache_dir() -> Path:
    """mace-torch's cache folder (``$XDG_CACHE_HOME/mace``, else ``~/.cache/mace``), read at call time."""
    return Path(_mace("get_cache_dir")())


def cache_path(name: str) -> Path:
    """Where mace-torch's ``download_mace_mp_checkpoint(name)`` keeps foundation ``name``.

    mace-torch names the file after the URL's basename with everything but letters, digits and
    ``_`` removed (``mace-mpa-0-medium.model`` -> ``macempa0mediummodel``).
    """
    basename = os.path.basename(url(name))
    return cache_dir() / "".join(c for c in basename if c.isalnum() or c == "_")


def bundled_path(name: str) -> Path | None:
    """The copy of ``medium-mpa-0`` some mace-torch installs ship in the package, if present."""
    local_model_path = _mace("local_model_path")
    if name == "medium-mpa-0" and os.path.isfile(local_model_path):
        return Path(local_model_path)
    return None


def locate(name: str) -> Path | None:
    """The local file of foundation ``name`` (bundled, else cached), or ``None`` if it must be downloaded."""
    bundled = bundled_path(name)
    if bundled is not None:
        return bundled
    cached = cache_path(name)
    return cached if cached.is_file() else None


def by_hand(name: str) -> str:
    """The sentence telling a user how to place foundation ``name`` in the cache without snb_ml."""
    return (
        f"To place it by hand, download {url(name)} where there is network and save it as {cache_path(name)}."
    )


def fetch(name: str, default: bool = False) -> Path:
    """Return the local file of foundation ``name``, downloading it once into mace-torch's cache.

    Args:
        name: A name of :func:`foundation_names`.
        default: The name was not given but is the default (for messages).

    Returns:
        The path of the model file.

    Raises:
        ModelError: If the file is not cached and may not (``SNB_ML_OFFLINE``) or cannot be
            downloaded; nothing is left in the cache then.
    """
    found = locate(name)
    if found is not None:
        return found
    label = f"'{name}'" + (" (the default of --relaxer mace without --model)" if default else "")
    if offline():
        raise ModelError(
            f"MACE foundation model {label} is not in mace-torch's cache ({cache_dir()}) and "
            f"{OFFLINE_ENV} is set, so it will not be downloaded. {by_hand(name)} {OFFLINE_HELP}"
        )
    return download(name, label)


def download(name: str, label: str | None = None) -> Path:
    """Download foundation ``name`` to :func:`cache_path`; a failed download leaves no file there.

    Args:
        name: A name of :func:`foundation_names`.
        label: How to name the model in messages (default: the quoted name).

    Returns:
        The path of the downloaded file.

    Raises:
        ModelError: On any network error, an HTML page instead of the model, or fewer bytes than
            announced.
    """
    label = label or f"'{name}'"
    source, target = url(name), cache_path(name)
    print(f"Downloading MACE foundation model '{name}' (first use): {source} -> {target}", file=sys.stderr)
    if describe(name).licence == "ASL":
        print(
            "This model is distributed under the Academic Software License (https://github.com/gabor1/ASL); "
            "using it means accepting its terms.",
            file=sys.stderr,
        )
    try:
        with atomic_path(target) as temporary:
            _stream(source, temporary)
    except Exception as exc:  # URLError, timeouts, resets, truncation, HTML pages: all mean "no model"
        cause = (
            f"the cache folder {target.parent} is not writable"
            if isinstance(exc, PermissionError)
            else "the network may be unavailable"
        )
        raise ModelError(
            f"Could not download MACE foundation model {label} from {source} ({type(exc).__name__}: "
            f"{exc}); {cause}. Nothing was written to the cache. {by_hand(name)} {OFFLINE_HELP}"
        ) from exc
    return target


def _stream(source: str, temporary: Path) -> None:
    with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S) as response:
        if response.headers.get_content_type() == "text/html":
            raise ValueError("the server sent an HTML page, not a model file")
        expected = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with (
            open(temporary, "wb") as out,
            progress_bar(
                total=expected, unit="B", unit_scale=True, desc="MACE model", file=sys.stderr, leave=False
            ) as bar,
        ):
            while block := response.read(1 << 20):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    # urllib returns a short body without complaint when the connection drops early.
    if expected is not None and received != expected:
        raise OSError(f"connection closed after {received} of {expected} bytes")
    if received == 0:
        raise OSError("the server sent an empty file")
