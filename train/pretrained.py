"""Where the backbone's weights come from: a local file, open_clip's download cache, or a
download, resolved to one local file (or None for random weights).

    resolve_weights("ViT-B-16-plus-240", "laion400m_e31")     # cache hit, else download
    resolve_weights("ViT-B-16-plus-240", "/path/model.bin")   # a local checkpoint file
    resolve_weights("ViT-B-16-plus-240", "random")            # None: random weights

Line-side workstations are often offline. huggingface_hub retries a failed name lookup five
times with backoff (about 23 s a file, and open_clip asks for two), so an offline `fsac
train` used to wait 46 s for its error. `hub_unreachable` looks the download host up once
first; when it does not resolve (and no proxy would resolve it instead), the error comes at
once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from fsac.errors import FsacError

RANDOM_WEIGHTS = "random"
HF_ENDPOINT = "https://huggingface.co"  # huggingface_hub's default; HF_ENDPOINT overrides it
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def cached_pretrained(arch: str, tag: str, cache_dir: str | None = None) -> Path | None:
    """The file of a pretrained tag if an earlier download left it in the local cache, else
    None. Never touches the network."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        return None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub"].rstrip("/")
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if cfg.get("url"):
        root = Path(cache_dir or Path.home() / ".cache" / "clip").expanduser()
        hit = root / Path(cfg["url"]).name
        if hit.is_file():
            return hit
    return None


def download_host(cfg: dict) -> str | None:
    """The host open_clip's `download_pretrained` fetches a pretrained config's file from:
    the Hugging Face hub when the config names a hub repo (it then ignores the URL), else the
    URL's host."""
    if "file" in cfg:
        return None
    # open_clip prefers the hub whenever huggingface_hub is installed
    if cfg.get("hf_hub") and importlib.util.find_spec("huggingface_hub") is not None:
        return urlparse(os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).hostname
    return urlparse(cfg["url"]).hostname if cfg.get("url") else None


def hub_unreachable(cfg: dict) -> str | None:
    """Why the download cannot work from here, found in well under a second, or None when it
    might (the host resolves, or a proxy is set: the proxy resolves names itself)."""
    host = download_host(cfg)
    if not host or any(os.environ.get(v) for v in PROXY_VARS):
        return None
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        return f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}"
    return None


@contextlib.contextmanager
def quiet_logger(name: str):
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _download_error(arch: str, weights: str, why: str) -> FsacError:
    return FsacError(f"could not download the {arch} '{weights}' weights ({why}). Without internet, pass "
                     "--weights PATH to a local checkpoint file, or --weights random for a pipeline test")


def resolve_weights(arch: str, weights: str, cache_dir: str | None = None,
                    offline: bool = False) -> tuple[Path | None, str]:
    """-> (local weights file or None for random, weights id). Downloads pretrained tags
    unless `offline`, which only looks in the local download cache."""
    import open_clip

    if weights in (RANDOM_WEIGHTS, "none"):
        return None, RANDOM_WEIGHTS
    path = Path(weights).expanduser()
    if path.is_file():
        return path, f"file:{path.name}"
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights in tags:
        cached = cached_pretrained(arch, weights, cache_dir)
        if cached is not None:
            return cached, weights
        if offline:
            raise FsacError(f"the {arch} '{weights}' weights are not in the local download cache")
        cfg = open_clip.get_pretrained_cfg(arch, weights)
        why = hub_unreachable(cfg)
        if why:
            raise _download_error(arch, weights, f"no network: {why}")
        try:
            # huggingface_hub logs every failed attempt (a dozen WARNING lines offline); our
            # one error line below says what happened and what to do instead.
            with quiet_logger("huggingface_hub"):
                file = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
        except Exception as e:  # network errors come in many types (requests, hf_hub, urllib)
            raise _download_error(arch, weights, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
        if not file:
            raise FsacError(f"open_clip returned no file for {arch} '{weights}'")
        return Path(file), weights
    if path.suffix or "/" in weights or "\\" in weights:
        raise FsacError(f"weights file not found: {weights}")
    hint = f"pretrained tags for {arch}: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags"
    raise FsacError(f"unknown weights '{weights}' ({hint}; or a checkpoint file path, or 'random')")
