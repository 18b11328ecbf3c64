"""The watch folder's memory of scored files (source.processed: leave, the default): a restart
scores only what no earlier run scored, a SIGKILL never leaves a file remembered without its
record, and a full disk costs a re-score, never a result."""

from __future__ import annotations

import json
import logging
import os
import signal
import textwrap
import threading
import time
from pathlib import Path


from fsac.runtime.cli import check
from fsac.runtime.config import load_config
from fsac.runtime.daemon import Daemon
from fsac.runtime.sources.watch_ledger import LEDGER_NAME, SCHEMA, WatchLedger, read_ledger
from fsac_run_helpers import drop, fill, fsac_run, png, read_jsonl, wait_for


def ledger_names(journal: Path) -> list[str]:
    keys, why = read_ledger(journal / LEDGER_NAME, (journal.parent / "drop").resolve())
    assert keys is not None, why
    return sorted(k[0] for k in keys)


def run_until(cfg, n_records: int, out: Path, after=None) -> tuple[Daemon, list[dict]]:
    """One in-process run of the daemon: until `n_records` of its own are acknowledged."""
    daemon = Daemon(cfg, install_signals=False)
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), daemon=True)
    t.start()
    wait_for(lambda: daemon.ready()[0], 20, what="the daemon ready")
    if after is not None:
        after()
    wait_for(lambda: daemon.acked >= n_records, 20, what=f"{n_records} files acknowledged")
    time.sleep(0.4)  # several more polls: nothing else may be scored
    daemon.request_stop()
    t.join(20)
    assert result["code"] == 0
    return daemon, [r for r in read_jsonl(out) if r["run_id"] == daemon.run_id]


def test_a_restart_scores_only_files_no_earlier_run_scored(tmp_path, model_file):
    src, out, journal = tmp_path / "drop", tmp_path / "r.jsonl", tmp_path / "journal"
    src.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        drop(src, name, png(40 * i))
    settings = ["http.enabled=false", "source.kind=watch", "source.settle_s=0.05", "source.poll_s=0.02",
                f"journal.dir={journal}", "journal.commit_interval_s=0.05"]
    cfg = lambda *more: load_config(None, [*settings, *more], model=str(model_file), source=str(src),  # noqa: E731
                                    jsonl=str(out))
    d1, first = run_until(cfg(), 3, out)
    assert sorted(r["name"] for r in first) == ["a.png", "b.png", "c.png"] and d1.acked == 3
    assert ledger_names(journal) == ["a.png", "b.png", "c.png"]
    assert any("3 file(s) scored by earlier runs skipped" in line for line in check(cfg()))

    # Run 2: b.png written again (new content, same name), c.png removed, d.png new.
    def change():
        time.sleep(0.3)  # the first scans see the folder as run 1 left it, minus c.png
        drop(src, "b.png", png(200))
        drop(src, "d.png", png(90))

    (src / "c.png").unlink()
    d2, second = run_until(cfg(), 2, out, after=change)
    assert sorted(r["name"] for r in second) == ["b.png", "d.png"] and d2.acked == 2
    b = next(r for r in second if r["name"] == "b.png")
    assert round((b["logit"] + 1) * 255 / 2) == 200  # the new version was scored
    assert ledger_names(journal) == ["a.png", "b.png", "d.png"]  # c.png forgotten, b.png once
    lines = (journal / LEDGER_NAME).read_text().splitlines()
    assert json.loads(lines[0]) == {"schema": SCHEMA, "folder": str(src.resolve())}

    # Run 3: existing=all scores the whole folder again (e.g. with a new model).
    d3, third = run_until(cfg("source.existing=all"), 3, out)
    assert sorted(r["name"] for r in third) == ["a.png", "b.png", "d.png"]
    # Run 4, the default again: nothing new, nothing scored.
    d4, fourth = run_until(cfg(), 0, out)
    assert fourth == [] and d4.acked == 0


def test_sigkill_never_leaves_a_file_remembered_without_its_record(tmp_path, model_file, image_folder):
    src, out = tmp_path / "drop", tmp_path / "r.jsonl"
    src.mkdir()
    images = sorted(image_folder.iterdir())
    names = [f"f_{i:03d}.png" for i in range(60)]
    for i, name in enumerate(names):
        os.link(images[i % len(images)], src / name)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(textwrap.dedent(f"""
        model: {{path: {model_file}, batch_size: 2}}
        source: {{kind: watch, uri: drop, settle_s: 0.05, poll_s: 0.02}}
        sinks: {{jsonl: {{path: r.jsonl}}}}
        journal: {{dir: journal, commit_interval_s: 0.05}}
        http: {{enabled: false}}
    """))
    proc = fsac_run("--config", str(cfg))
    wait_for(lambda: (tmp_path / "journal" / LEDGER_NAME).exists() and len(ledger_names(tmp_path / "journal")) >= 10,
             30, what="10 files remembered")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    remembered = set(ledger_names(tmp_path / "journal"))
    assert len(remembered) < 60, "the kill came after every file was scored; nothing left to test"
    proc = fsac_run("--config", str(cfg))
    try:
        wait_for(lambda: {r["name"] for r in read_jsonl(out)} == set(names), 30, what="a record for every file")
        wait_for(lambda: len(ledger_names(tmp_path / "journal")) == 60, 20, what="all 60 remembered")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    records = read_jsonl(out)
    runs = list(dict.fromkeys(r["run_id"] for r in records))
    assert len(runs) == 2
    first = {r["name"] for r in records if r["run_id"] == runs[0]}
    second = [r["name"] for r in records if r["run_id"] == runs[1]]
    assert remembered <= first  # remembered at the kill -> its record survived it (replayed from the journal)
    assert sorted(second) == sorted(set(names) - remembered)  # exactly the rest, each once


def test_a_full_disk_costs_a_rescore_not_a_result(mount_small, tmp_path, caplog):
    fs = mount_small("64k")
    folder = tmp_path / "drop"
    ledger = WatchLedger(fs / LEDGER_NAME, folder)
    assert ledger.load() == set()
    ledger.prune(set())  # start of a run: writes the header
    ledger.add(("a.png", 1, 10, 100))
    filler = fill(fs)
    with caplog.at_level(logging.WARNING, logger="fsac.runtime"):
        for i in range(200):
            ledger.add((f"p{i:03d}.png", 2 + i, 10, 100))
    assert ledger.errors >= 1
    assert any("not remembered; a restart scores them again" in r.getMessage() for r in caplog.records)
    filler.unlink()
    ledger.add(("z.png", 999, 10, 100))  # the disk has room again: the whole ledger is rewritten
    ledger.close()
    keys, why = read_ledger(fs / LEDGER_NAME, folder)
    assert keys == {("a.png", 1, 10, 100), ("z.png", 999, 10, 100)} | {(f"p{i:03d}.png", 2 + i, 10, 100)
                                                                         for i in range(200)}, why


def test_a_torn_line_is_skipped_and_another_folders_ledger_set_aside(tmp_path, caplog):
    path, folder = tmp_path / LEDGER_NAME, tmp_path / "drop"
    path.write_text(json.dumps({"schema": SCHEMA, "folder": str(folder)}) + '\n["a.png", 1, 2, 3]\n["b.pn')
    assert read_ledger(path, folder) == ({("a.png", 1, 2, 3)}, "")
    other = tmp_path / "elsewhere"
    with caplog.at_level(logging.WARNING, logger="fsac.runtime"):
        assert WatchLedger(path, other).load() == set()
    assert f"is for folder {folder}, not {other}" in caplog.text
    assert not path.exists() and (tmp_path / (LEDGER_NAME + ".old")).exists()
    assert read_ledger(tmp_path / "missing.jsonl", folder) == (None, "no ledger yet")
