"""Weights resolution (train/pretrained.py): local file, download cache, download, and the
errors an offline workstation gets: at once, naming what to pass instead."""

import open_clip
import pytest

from fsac.errors import FsacError
from fsac.train import pretrained
from tests.conftest import FULL_ARCH


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setattr(pretrained, "cached_pretrained", lambda arch, tag, cache_dir=None: None)


@pytest.fixture
def no_proxy(monkeypatch):
    for var in pretrained.PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_hub_tag(monkeypatch):
    """A pretrained tag whose file lives on a hub repo; the hub host comes from HF_ENDPOINT."""
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: ["test_tag"])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda arch, tag: {"hf_hub": "fake/repo/", "url": "https://example.org/w.bin"})


def test_failed_download_is_a_clear_error(monkeypatch, no_cache):
    monkeypatch.setattr(pretrained, "hub_unreachable", lambda cfg: None)  # reach the download itself

    def no_network(cfg, cache_dir=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip, "download_pretrained", no_network)
    with pytest.raises(FsacError, match="could not download.*OSError: Name or service.*--weights PATH.*--weights random"):
        pretrained.resolve_weights(FULL_ARCH, "laion400m_e31")


def test_offline_resolution_never_downloads(monkeypatch, no_cache):
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("network used"))
    with pytest.raises(FsacError, match="not in the local download cache"):
        pretrained.resolve_weights(FULL_ARCH, "laion400m_e31", offline=True)


def test_unresolvable_host_fails_before_any_download(monkeypatch, no_cache, no_proxy, fake_hub_tag):
    """The real name lookup of a reserved-invalid host (RFC 6761): it never resolves, on any
    machine, so the download (minutes of retries offline) must not even start."""
    monkeypatch.setenv("HF_ENDPOINT", "https://fsac-test.invalid")
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(FsacError, match=r"no network: cannot resolve fsac-test\.invalid.*--weights PATH"):
        pretrained.resolve_weights(FULL_ARCH, "test_tag")


def test_a_proxy_resolves_names_itself_so_the_download_is_tried(monkeypatch, no_cache, no_proxy, fake_hub_tag):
    monkeypatch.setenv("HF_ENDPOINT", "https://fsac-test.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    tried = []

    def refused(cfg, cache_dir=None):
        tried.append(cfg)
        raise OSError("Connection refused")

    monkeypatch.setattr(open_clip, "download_pretrained", refused)
    with pytest.raises(FsacError, match="could not download.*OSError: Connection refused"):
        pretrained.resolve_weights(FULL_ARCH, "test_tag")
    assert tried == [{"hf_hub": "fake/repo/", "url": "https://example.org/w.bin"}]


def test_download_host_follows_open_clip(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert pretrained.download_host({"hf_hub": "a/b/", "url": "https://example.org/w.bin"}) == "huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.com/")
    assert pretrained.download_host({"hf_hub": "a/b/"}) == "hf-mirror.example.com"
    assert pretrained.download_host({"url": "https://openaipublic.example.net/clip/w.pt"}) == "openaipublic.example.net"
    assert pretrained.download_host({"file": "/models/w.bin"}) is None
    assert pretrained.download_host({}) is None


def test_local_host_is_reachable(monkeypatch, no_proxy):
    monkeypatch.setenv("HF_ENDPOINT", "https://localhost")
    assert pretrained.hub_unreachable({"hf_hub": "a/b/"}) is None


def test_errors_for_unknown_weights():
    with pytest.raises(FsacError, match="weights file not found: /no/such/file.safetensors"):
        pretrained.resolve_weights(FULL_ARCH, "/no/such/file.safetensors")
    with pytest.raises(FsacError, match="unknown weights 'laion9000'.*laion400m_e31"):
        pretrained.resolve_weights(FULL_ARCH, "laion9000")


def test_random_needs_no_file():
    assert pretrained.resolve_weights(FULL_ARCH, "random") == (None, "random")
    assert pretrained.resolve_weights(FULL_ARCH, "none") == (None, "random")
