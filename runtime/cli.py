"""`fsac-run`: the line-side daemon's command line.

    fsac-run --config /etc/fsac/fsac-run.yaml
    fsac-run --model bottle.fsac.onnx --source /srv/drop --set source.kind=watch --jsonl results.jsonl
    fsac-run --config fsac-run.yaml --check      # validate config, model and source, then exit

Exit codes: 0 clean stop (end of a file source, or SIGTERM/SIGINT after draining),
1 a failure while running (records may be missing; see the log), 2 a problem found at start
(bad setting, refused model, missing source), printed as one line without a traceback.

Deliberately argparse, not typer: this is the edge box's entry point and every import
counts (and the runtime must never import torch, not even through `fsac.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fsac import __version__
from fsac.errors import FsacError
from fsac.io import nearest_existing

from .config import load_config, sink_section_enabled

log = logging.getLogger("fsac.runtime")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsac-run",
        description="Score every frame from the line camera with an exported fsac model and report each result.",
        epilog="Settings: see the example config runtime/systemd/fsac-run.example.yaml. Signals: SIGTERM/SIGINT "
        "stop after draining the queue; SIGHUP reloads the model file.")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML (.yaml/.yml) or TOML (.toml) config file")
    p.add_argument("--model", metavar="PATH", help="model file (sets model.path)")
    p.add_argument("--source", metavar="URI", help="folder, video file, camera index, URL or GStreamer pipeline "
                   "(sets source.uri)")
    p.add_argument("--jsonl", metavar="FILE", help="JSON-lines result file (sets sinks.jsonl.path)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override any setting, e.g. --set source.mode=latest-frame (repeatable)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="sets logging.level")
    p.add_argument("--check", action="store_true", help="validate config, model, source and sinks, then exit")
    p.add_argument("--config-schema", action="store_true", help="print the JSON Schema of the config file and exit "
                   "(the same as runtime/schema/config.schema.json)")
    p.add_argument("--version", action="version", version=f"fsac-run {__version__}")
    return p


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal adds its own timestamps.
    fmt = "fsac-run %(levelname)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s fsac-run %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger("fsac.runtime")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def _abs(path: str | None) -> str | None:
    """Command-line paths are relative to the current folder; keep URLs and indices as given."""
    if path is None:
        return None
    from .config import _looks_like_path

    return str(Path(path).expanduser().absolute()) if _looks_like_path(path) and path else path


def check_journal_dir(folder: str) -> None:
    """The daemon creates journal.dir at start (runtime/journal.py) and stops if it cannot;
    --check must say so too, without creating anything. The first part of the path that
    exists must be a folder this process may write into (access() also reports a read-only
    file system, even to root)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise FsacError(f"journal.dir: {path} is not a folder")
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise FsacError(f"journal.dir: cannot create {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write in" if existing == path else "create folders in"
        raise FsacError(f"journal.dir: cannot {what} {existing} (read-only or no permission), so {path} "
                        "cannot hold the journal")


def check(cfg) -> list[str]:
    """What `--check` verifies: everything the daemon would refuse at start, without scoring."""
    from .backends import load_model
    from .sinks import SINKS
    from .sources import make_source

    lines = []
    model = load_model(cfg.model)
    lines.append(f"model: {model.describe()}")
    lines.extend(f"warning: {w}" for w in model.warnings)
    model.backend.close()
    if cfg.source.uri:
        source = make_source(cfg.source)
        source.use_state_dir(cfg.journal.dir)
        try:
            lines.append(f"source: {source.check()}, mode {cfg.source.mode}")
        finally:
            source.close()
    else:  # trigger mode without a source: the images come with the requests
        lines.append("source: none, mode trigger (images sent with the requests)")
    if cfg.sinks.jsonl.path:
        path = Path(cfg.sinks.jsonl.path)
        parent = nearest_existing(path.parent)
        if (path.exists() and not os.access(path, os.W_OK)) or (not path.exists() and not os.access(parent, os.W_OK)):
            raise FsacError(f"sinks.jsonl.path: cannot write {path} (permissions)")
        jl = cfg.sinks.jsonl
        lines.append(f"sink jsonl: {path} (rotate at {jl.max_bytes} bytes, keep {jl.backups})")
    check_journal_dir(cfg.journal.dir)
    lines.append(f"journal: {cfg.journal.dir}")
    for spec in SINKS:
        if spec.always_present or not sink_section_enabled(getattr(cfg.sinks, spec.name)):
            continue
        spec.importable()  # its settings were validated with the config
        lines.append(f"sink {spec.name}: settings valid (the destination itself is contacted only when running)")
    if cfg.http.enabled:
        lines.append(f"http: http://{cfg.http.host}:{cfg.http.port}/metrics")
    if cfg.http.enabled and cfg.live.enabled:
        from .webui import check_access

        token = check_access(cfg.http.host)  # off loopback without FSAC_RUN_TOKEN: refused here too
        lines.append(f"live view: http://{cfg.http.host}:{cfg.http.port}/" + (" (token: FSAC_RUN_TOKEN)" if token else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config_schema:
        from .config import config_schema_text

        sys.stdout.write(config_schema_text())
        return 0
    try:
        overrides = list(args.overrides)
        if args.log_level:
            overrides.append(f"logging.level={args.log_level}")
        cfg = load_config(args.config, overrides, model=_abs(args.model), source=_abs(args.source),
                          jsonl=_abs(args.jsonl))
        setup_logging(cfg.logging.level)
        if args.check:
            for line in check(cfg):
                print(line)
            print("fsac-run --check: OK")
            return 0
        from .daemon import Daemon

        daemon = Daemon(cfg)
        return daemon.run()
    except FsacError as e:
        print(f"fsac-run: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading, before the handlers are installed
        print("fsac-run: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
