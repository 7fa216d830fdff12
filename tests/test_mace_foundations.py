"""MACE foundation models by name and by default, with mace-torch's cache and no network at all.

Every test runs behind a guard that refuses (and records) any connection that leaves this machine;
downloads are exercised against a real HTTP server on 127.0.0.1. Tiny MACE models stand in for the
foundation files, placed exactly where mace-torch's own ``download_mace_mp_checkpoint`` looks.
"""

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BIN

from snb_ml.api import relax_tree
from snb_ml.errors import ModelError
from snb_ml.plugins import get_relaxer
from snb_ml.relaxers import mace_foundations as foundations
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel

try:
    from mace_models import build_tiny_mace
    from test_mace_backend import write_snb_tree
except ImportError:  # tests/ imported as a package
    from tests.mace_models import build_tiny_mace
    from tests.test_mace_backend import write_snb_tree

pytestmark = [
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"),
    pytest.mark.filterwarnings("ignore:Model 'MACE medium-mpa-0' has no charge embedding:UserWarning"),
]

# Every name mace-torch 0.3.16 knows (mace_mp_names), with what its README says each was trained on.
TRAINED_ON_0_3_16 = {
    "small": "MPtrj",
    "medium": "MPtrj",
    "large": "MPtrj",
    "small-0b": "MPtrj",
    "medium-0b": "MPtrj",
    "small-0b2": "MPtrj",
    "medium-0b2": "MPtrj",
    "large-0b2": "MPtrj",
    "medium-0b3": "MPtrj",
    "medium-mpa-0": "MPtrj + sAlex",
    "small-omat-0": "OMAT",
    "medium-omat-0": "OMAT",
    "mace-matpes-pbe-0": "MATPES-PBE",
    "mace-matpes-r2scan-0": "MATPES-r2SCAN",
    "mh-0": "OMAT/OMOL/OC20/MATPES",
    "mh-1": "OMAT/OMOL/OC20/MATPES",
}
LOOPBACK = ("127.0.0.1", "::1", "localhost")


# --- fixtures: no network, a private mace cache, tiny models, a local HTTP server --------------------------


class NetworkGuard:
    """Records every attempt to reach another machine (each one is refused)."""

    def __init__(self) -> None:
        self.attempts: list[str] = []


@pytest.fixture(autouse=True)
def network(monkeypatch) -> NetworkGuard:
    guard = NetworkGuard()
    real_urlopen = urllib.request.urlopen
    real_connect = socket.socket.connect

    def urlopen(target, *args, **kwargs):
        address = target if isinstance(target, str) else target.full_url
        if urllib.parse.urlsplit(address).hostname not in LOOPBACK:
            guard.attempts.append(address)
            raise urllib.error.URLError("[Errno 101] Network is unreachable (test guard)")
        return real_urlopen(target, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            guard.attempts.append(f"socket {address}")
            raise OSError(101, "Network is unreachable (test guard)")
        return real_connect(sock, address)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return guard


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty mace-torch cache: ``$XDG_CACHE_HOME/mace`` (mace-torch's ``get_cache_dir``)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SNB_ML_OFFLINE", raising=False)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.chdir(tmp_path)  # no file called like a foundation model here
    directory = tmp_path / "xdg" / "mace"
    assert foundations.cache_dir() == directory
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_mace(tmp_path_factory.mktemp("tiny") / "tiny.model")


@pytest.fixture(scope="module")
def tiny_multihead(tmp_path_factory) -> Path:
    return build_tiny_mace(tmp_path_factory.mktemp("tiny") / "multihead.model", heads=["pbe", "hse"])


def place(model: Path, name: str) -> Path:
    """Put ``model`` where mace-torch caches foundation ``name``."""
    target = foundations.cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model.read_bytes())
    return target


def files_in(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def load(model=None, **request) -> LoadedModel:
    return get_relaxer("mace").load(CalculatorRequest(model=model, device="cpu", **request))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ModelServer:
    """A real HTTP server on 127.0.0.1 serving one file, whole, cut off half-way, or as an HTML page."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.mode = "whole"
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                if server.mode == "html":
                    body = b"<html><body>404 - release asset not found</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                else:
                    body = server.payload
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "cut":  # the connection drops half-way through the file
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url_for(self, name: str) -> str:
        """A local URL with the same file name as mace-torch's, so the cache file name is unchanged."""
        basename = foundations.url(name).rsplit("/", 1)[1]
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/release/{basename}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tiny, monkeypatch, cache):
    """Serve the tiny model as mace-torch's default foundation file from 127.0.0.1."""
    from mace.calculators import foundations_models

    served = ModelServer(tiny.read_bytes())
    name = foundations.DEFAULT_FOUNDATION
    monkeypatch.setitem(foundations_models.mace_mp_urls, name, served.url_for(name))
    yield served
    served.close()


# --- the default model --------------------------------------------------------------------------------------


def test_default_is_the_file_mace_mp_uses_and_is_read_from_the_cache(tiny, cache, network):
    from mace.calculators.foundations_models import download_mace_mp_checkpoint

    assert foundations.DEFAULT_FOUNDATION == "medium-mpa-0"
    cached = place(tiny, foundations.DEFAULT_FOUNDATION)
    # mace-torch's own resolution of mace_mp() without a model finds the very same file.
    assert Path(download_mace_mp_checkpoint(None)) == cached

    loaded = load(None)
    assert network.attempts == []
    assert loaded.name == "MACE medium-mpa-0"
    assert loaded.source == str(cached)
    assert loaded.file_sha256 == sha256(cached)
    assert loaded.supported_numbers == frozenset({48, 52})
    # Same weights as the file we placed: the energy of a cell equals the tiny model's own.
    direct = load(str(tiny))
    assert direct.file_sha256 == loaded.file_sha256
    from ase.build import bulk

    atoms = bulk("CdTe", "zincblende", a=6.54, cubic=True)
    atoms.calc = loaded.calculator
    first = atoms.get_potential_energy()
    atoms.calc = direct.calculator
    assert atoms.get_potential_energy() == pytest.approx(first, abs=1e-10)


def test_every_foundation_name_uses_mace_torchs_cache_file(cache, network):
    from mace.calculators.foundations_models import download_mace_mp_checkpoint

    names = foundations.foundation_names()
    assert set(TRAINED_ON_0_3_16) <= set(names)
    for name in names:
        target = foundations.cache_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"placeholder")
        # mace-torch finds a cached file and returns its path without downloading.
        assert Path(download_mace_mp_checkpoint(name)) == target, name
        assert foundations.locate(name) == target
    assert network.attempts == []
    assert len(files_in(cache)) == len(names)  # one distinct file per name


def test_no_cache_and_no_network_gives_one_clear_error(cache, network):
    with pytest.raises(ModelError) as error:
        load(None)
    message = str(error.value)
    assert "'medium-mpa-0' (the default of --relaxer mace without --model)" in message
    assert str(foundations.cache_path("medium-mpa-0")) in message  # where to put it by hand
    assert foundations.url("medium-mpa-0") in message
    assert "--relaxer chgnet" in message and "--model PATH" in message
    assert "Network is unreachable" in message
    assert network.attempts == [foundations.url("medium-mpa-0")]  # tried once, through urllib
    assert files_in(cache) == []


def test_offline_never_tries_the_network(cache, network, monkeypatch):
    monkeypatch.setenv("SNB_ML_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        load(None)
    message = str(error.value)
    assert "SNB_ML_OFFLINE is set" in message
    assert str(foundations.cache_path("medium-mpa-0")) in message
    assert "--relaxer chgnet" in message
    assert network.attempts == []
    assert not cache.exists()


# --- downloading once ---------------------------------------------------------------------------------------


def test_downloaded_once_then_reused_offline(server, tiny, cache, network, monkeypatch):
    first = load(None)
    cached = foundations.cache_path("medium-mpa-0")
    assert server.requests == ["/release/mace-mpa-0-medium.model"]
    assert cached.read_bytes() == tiny.read_bytes()
    assert files_in(cache) == [cached.name]  # no temporary file left beside it
    assert first.source == str(cached) and first.file_sha256 == sha256(tiny)

    server.close()
    monkeypatch.setenv("SNB_ML_OFFLINE", "1")
    again = load(None)
    assert len(server.requests) == 1
    assert again.file_sha256 == first.file_sha256
    assert network.attempts == []


def test_interrupted_download_leaves_no_file(server, tiny, cache):
    server.mode = "cut"
    with pytest.raises(ModelError) as error:
        load(None)
    message = str(error.value)
    assert "Could not download MACE foundation model 'medium-mpa-0'" in message
    assert f"after {len(tiny.read_bytes()) // 2} of {len(tiny.read_bytes())} bytes" in message
    assert "Nothing was written to the cache" in message
    assert files_in(cache) == []  # neither a truncated model nor a temporary file

    server.mode = "whole"  # the next run simply downloads it
    assert load(None).file_sha256 == sha256(tiny)


def test_html_error_page_is_not_cached(server, cache):
    server.mode = "html"
    with pytest.raises(ModelError, match="HTML page, not a model file"):
        load(None)
    assert files_in(cache) == []


# --- names, heads, damaged files ----------------------------------------------------------------------------


def test_named_foundation_and_multihead_foundation_needs_head(tiny, tiny_multihead, cache, network):
    place(tiny, "small")
    small = load("small")
    assert small.name == "MACE small" and small.head is None

    place(tiny_multihead, "mh-1")
    with pytest.raises(ModelError) as error:
        load("mh-1")
    message = str(error.value)
    assert "'mh-1' has several heads (pbe, hse)" in message and "--head" in message
    chosen = load("mh-1", head="pbe")
    assert chosen.name == "MACE mh-1"
    assert chosen.head == "pbe" and chosen.calculator.head == "pbe"
    with pytest.raises(ModelError, match="has no head 'omat'. Its heads are: pbe, hse"):
        load("mh-1", head="omat")
    assert network.attempts == []


def test_unknown_name_lists_the_valid_ones(cache, network):
    for name in ("medium-mpa-9", "polar-1-s"):
        with pytest.raises(ModelError) as error:
            load(name)
        message = str(error.value)
        assert f"MACE model '{name}' is neither an existing file nor a MACE-MP foundation" in message
        for valid in foundations.foundation_names():
            assert valid in message
        assert "molecular models" in message
    assert network.attempts == []
    assert not cache.exists()


def test_corrupt_cached_file_says_where_and_how_to_refresh(cache, network):
    damaged = foundations.cache_path("small")
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"<html>truncated by an old downloader</html>")
    with pytest.raises(ModelError) as error:
        load("small")
    message = str(error.value)
    assert f"The cached file of MACE foundation model 'small' is damaged: {damaged} cannot be read" in message
    assert f"rm '{damaged}'" in message and "download it afresh" in message
    assert foundations.url("small") in message
    assert network.attempts == []  # a damaged file is reported, not silently re-downloaded


# --- provenance, command line -------------------------------------------------------------------------------


def test_provenance_records_model_name_and_file_hash(tiny, cache, network, tmp_path):
    cached = place(tiny, foundations.DEFAULT_FOUNDATION)
    tree = write_snb_tree(tmp_path / "snb")
    results = relax_tree(tree, relaxer="mace", output=tmp_path / "ml", steps=3, progress=False)
    assert not results.report.failed
    provenance = json.loads((tmp_path / "ml" / "v_Cd_-1" / "snb_ml_provenance.json").read_text())
    assert provenance["model"]["name"] == "MACE medium-mpa-0"
    assert provenance["model"]["file"] == {"path": str(cached), "sha256": sha256(cached)}
    assert provenance["model"]["version"].startswith("mace-torch 0.3")
    assert network.attempts == []


def test_plugins_lists_every_foundation_with_its_training_data(tiny, cache):
    from snb_ml.cli import main

    place(tiny, "medium-omat-0")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    table = result.output.split("MACE foundation models", 1)[1]
    # Columns: name, model, trained on, level of theory, licence, cached, note.
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in table.splitlines())}
    for name in foundations.foundation_names():
        assert name in rows, name
    for name, trained_on in TRAINED_ON_0_3_16.items():
        assert rows[name][2] == trained_on, rows[name]
    assert rows["medium-omat-0"][5] == "yes"
    assert rows["medium-mpa-0"][5] == "-"
    assert "without --model: medium-mpa-0" in result.output
    assert str(cache) in result.output


def test_snb_run_relaxer_mace_as_typed(tiny, cdte_tree, tmp_path):
    """`snb-run --relaxer mace` with nothing else relaxes with the cached default, offline.

    (Without a cached file the same command prints the error of
    ``test_no_cache_and_no_network_gives_one_clear_error``, through the CLI error path that
    ``test_mace_backend.test_cli_run_and_missing_model`` checks.)
    """
    home = tmp_path / "home"
    target = home / ".cache" / "mace" / foundations.cache_path(foundations.DEFAULT_FOUNDATION).name
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny.read_bytes())
    env = {"SNB_ML_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HOME": str(home)}
    environment = {key: value for key, value in os.environ.items() if key != "XDG_CACHE_HOME"}
    result = subprocess.run(
        [str(BIN / "snb-run"), "--relaxer", "mace", "--steps", "2", "--no-progress"],
        cwd=cdte_tree / "v_Cd_0",
        env={**environment, "PYTHONUNBUFFERED": "1", **env},  # ~/.cache/mace: mace-torch's default place
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MACE medium-mpa-0" in result.stdout
    provenance = json.loads((cdte_tree / "ml_tree" / "v_Cd_0" / "snb_ml_provenance.json").read_text())
    assert provenance["model"]["name"] == "MACE medium-mpa-0"
    assert provenance["model"]["file"] == {"path": str(target), "sha256": sha256(tiny)}
