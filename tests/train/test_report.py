"""fsac.train.report: summary arithmetic, table, JSON, Markdown, honesty note, figures."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fsac.errors import FsacError
from fsac.metrics import ImageMetrics, image_metrics
from fsac.train.report import (
    RANDOM_WEIGHTS_WARNING,
    EvalReport,
    RunResult,
    format_table,
    from_json,
    summarize,
    to_json,
    write_report,
)
from fsac.train.report_markdown import to_markdown
from fsac.train.report_figures import plot_roc, plot_score_histogram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WARNING_KEY = "RANDOM BACKBONE WEIGHTS"

# Metrics chosen by hand (fractions) so that summarize() can be checked by hand:
# (category, shots) -> [(auroc, aupr, f1) for seed 0, seed 1]
HAND = {
    ("bottle", 0): [(0.90, 0.80, 0.70), (0.90, 0.84, 0.74)],
    ("bottle", 1): [(0.95, 0.90, 0.85), (0.97, 0.94, 0.89)],
    ("pipe_staple", 0): [(0.60, 0.50, 0.40), (0.64, 0.56, 0.40)],
    ("pipe_staple", 1): [(0.80, 0.70, 0.60), (0.90, 0.74, 0.66)],
}


def _run(category, shots, seed, auroc, aupr, f1) -> RunResult:
    # The tiny score lists are placeholders; summarize() reads only the metrics.
    return RunResult(
        category=category,
        shots=shots,
        seed=seed,
        metrics=ImageMetrics(auroc, aupr, f1, f1_threshold=0.5, n_normal=2, n_anomalous=2),
        logits=[-2.2, -0.85, 0.4, 2.2],
        scores=[0.1, 0.3, 0.6, 0.9],
        labels=[0, 0, 1, 1],
        image_names=["good/000.png", "good/001.png", "broken_large/000.png", "broken_small/000.png"],
        train_images=[] if shots == 0 else [f"train/good/{seed:03d}.png"],
    )


def hand_report(random_weights: bool = False, skipped=None) -> EvalReport:
    results = [
        _run(cat, shots, seed, *vals)
        for (cat, shots), per_seed in HAND.items()
        for seed, vals in enumerate(per_seed)
    ]
    return EvalReport(
        results=results,
        skipped=skipped if skipped is not None else [],
        meta={
            "backbone": {"arch": "ViT-B-16-plus-240", "weights_id": "laion400m_e31", "weights_sha256": "ab" * 32},
            "fsac_version": "0.1.0",
            "settings": {"image_size": 240, "seeds": (0, 1)},
            "data_root": Path("/data/mvtec_ad"),
            "lr": np.float32(0.5),
        },
        random_weights=random_weights,
    )


def synthetic_report(random_weights: bool = False) -> EvalReport:
    """Realistic-looking runs (3 categories x shots 0/1/4 x 3 seeds) with real metrics."""
    rng = np.random.default_rng(0)
    results = []
    for ci, cat in enumerate(["bottle", "pipe_staple", "brain_mri"]):
        for shots in (0, 1, 4):
            for seed in range(3):
                n_norm, n_anom = 40 + 10 * ci, 60
                sep = 0.8 + 0.5 * shots**0.5 + 0.4 * ci  # more shots: better separated
                s = np.r_[rng.normal(0.3, 0.12, n_norm), rng.normal(0.3 + 0.12 * sep, 0.12, n_anom)]
                y = np.r_[np.zeros(n_norm, int), np.ones(n_anom, int)]
                names = [f"good/{i:03d}.png" for i in range(n_norm)] + [f"defect/{i:03d}.png" for i in range(n_anom)]
                results.append(
                    RunResult(cat, shots, seed, image_metrics(y, s), s, 1 / (1 + np.exp(-s)), y, names,
                              [f"train/good/{seed * 10 + k:03d}.png" for k in range(shots)])
                )
    return EvalReport(
        results=results,
        skipped=[{"file": "bottle/test/broken_large/013.png", "reason": "truncated PNG"}],
        meta={"backbone": {"arch": "ViT-B-16-plus-240", "weights_id": "random" if random_weights else "laion400m_e31"}},
        random_weights=random_weights,
    )


# ------------------------------------------------------------------------- summarize


def _row(rows, category, shots):
    (row,) = [r for r in rows if r.category == category and r.shots == shots]
    return row


def test_summarize_means_and_stds_by_hand():
    rows = summarize(hand_report())
    # order: shots ascending; categories in first-seen order, then the average row
    assert [(r.category, r.shots, r.is_average) for r in rows] == [
        ("bottle", 0, False), ("pipe_staple", 0, False), ("average", 0, True),
        ("bottle", 1, False), ("pipe_staple", 1, False), ("average", 1, True),
    ]
    assert all(r.n_seeds == 2 for r in rows)
    expect = {
        # (cat, shots): (auroc, std, aupr, std, f1, std); std over 2 seeds, ddof=0 = |a - b| / 2
        ("bottle", 0): (0.90, 0.00, 0.82, 0.02, 0.72, 0.02),  # (.80+.84)/2, (.74-.70)/2
        ("bottle", 1): (0.96, 0.01, 0.92, 0.02, 0.87, 0.02),  # (.95+.97)/2, (.97-.95)/2
        ("pipe_staple", 0): (0.62, 0.02, 0.53, 0.03, 0.40, 0.00),  # (.56-.50)/2 = .03
        ("pipe_staple", 1): (0.85, 0.05, 0.72, 0.02, 0.63, 0.03),  # (.90-.80)/2 = .05
        # average rows: mean = mean of category means; std = spread over seeds of the
        # per-seed category average.
        # shots 0 AUROC: (.90 + .62)/2 = .76; per seed (.90+.60)/2 = .75, (.90+.64)/2 = .77 -> std .01
        #         AUPR:  (.82 + .53)/2 = .675; per seed .65, .70 -> .025
        #         F1:    (.72 + .40)/2 = .56; per seed .55, .57 -> .01
        ("average", 0): (0.76, 0.01, 0.675, 0.025, 0.56, 0.01),
        # shots 1 AUROC: (.96 + .85)/2 = .905; per seed (.95+.80)/2 = .875, (.97+.90)/2 = .935 -> .03
        #         AUPR:  (.92 + .72)/2 = .82; per seed .80, .84 -> .02
        #         F1:    (.87 + .63)/2 = .75; per seed .725, .775 -> .025
        ("average", 1): (0.905, 0.03, 0.82, 0.02, 0.75, 0.025),
    }
    for (cat, shots), (a, a_sd, p, p_sd, f, f_sd) in expect.items():
        r = _row(rows, cat, shots)
        got = (r.auroc, r.auroc_std, r.aupr, r.aupr_std, r.f1_max, r.f1_max_std)
        assert got == pytest.approx((a, a_sd, p, p_sd, f, f_sd), abs=1e-12), (cat, shots)


def test_summarize_one_seed_has_zero_std():
    report = EvalReport(results=[_run("bottle", 1, 7, 0.9, 0.8, 0.7), _run("cable", 1, 7, 0.7, 0.6, 0.5)])
    rows = summarize(report)
    assert [r.n_seeds for r in rows] == [1, 1, 1]
    for r in rows:
        assert (r.auroc_std, r.aupr_std, r.f1_max_std) == (0.0, 0.0, 0.0)
    assert rows[-1].auroc == pytest.approx(0.8)


def test_average_std_unavailable_when_seeds_differ():
    report = EvalReport(results=[
        _run("bottle", 1, 0, 0.9, 0.8, 0.7), _run("bottle", 1, 1, 0.8, 0.8, 0.7),
        _run("cable", 1, 0, 0.7, 0.6, 0.5),  # seed 1 of cable missing (interrupted run)
    ])
    avg = summarize(report)[-1]
    assert avg.is_average and avg.auroc == pytest.approx((0.85 + 0.7) / 2)
    assert avg.auroc_std is None
    assert "n/a" in format_table(report)


def test_duplicate_run_is_an_error():
    report = EvalReport(results=[_run("bottle", 1, 0, 0.9, 0.8, 0.7), _run("bottle", 1, 0, 0.8, 0.8, 0.7)])
    with pytest.raises(FsacError, match="duplicate run.*bottle, 1-shot, seed 0"):
        summarize(report)


def test_run_result_checks_lengths_and_converts_arrays():
    m = ImageMetrics(0.5, 0.5, 0.5, 0.0, 1, 1)
    with pytest.raises(FsacError, match="3 logits and 3 scores but 2 labels"):
        RunResult("bottle", 1, 0, m, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(FsacError, match="2 logits and 3 scores but 2 labels"):
        RunResult("bottle", 1, 0, m, [1.0, 2.0], [0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(FsacError, match="1 image names but 2 scores"):
        RunResult("bottle", 1, 0, m, [1.0, 2.0], [0.1, 0.2], [0, 1], ["a.png"])
    r = RunResult("bottle", np.int64(1), 0, m, np.array([1.0, 2.0], np.float32), np.array([0.1, 0.2], np.float32),
                  np.array([0, 1]), train_images=[Path("x.png")])
    assert type(r.shots) is int and type(r.scores[0]) is float and type(r.labels[0]) is int
    assert type(r.logits[0]) is float
    assert r.train_images == ["x.png"]


# ---------------------------------------------------------------------------- table


def test_format_table_contents_and_alignment():
    table = format_table(hand_report())
    for s in [
        "I-AUROC", "I-AUPR", "F1-max", "0 (zero-shot)",
        "90.0 ± 0.0",  # bottle 0-shot AUROC
        "96.0 ± 1.0",  # bottle 1-shot AUROC
        "53.0 ± 3.0",  # pipe_staple 0-shot AUPR
        "67.5 ± 2.5",  # average 0-shot AUPR
        "90.5 ± 3.0",  # average 1-shot AUROC
        "75.0 ± 2.5",  # average 1-shot F1-max
    ]:
        assert s in table, s
    lines = table.splitlines()
    body = [ln for ln in lines if ln.startswith(("bottle", "pipe_staple", "average", "category"))]
    assert len(body) == 7
    rule = next(ln for ln in lines if set(ln) == {"-"})
    assert all(len(ln) == len(rule) for ln in body)  # fixed width: every row spans the rule
    avg1 = next(ln for ln in body if ln.startswith("average") and "90.5" in ln)
    assert avg1.split()[1] == "1"  # shots column


def test_empty_report_table_markdown_json():
    report = EvalReport(skipped=[{"file": "a.png", "reason": "cannot decode"}])
    assert "(no evaluation runs)" in format_table(report)
    assert "1 test image could not be read" in format_table(report)
    assert "No evaluation runs." in to_markdown(report)
    assert to_json(report)["summary"] == []


# ----------------------------------------------------------------- JSON and Markdown


def test_json_round_trips():
    report = hand_report(skipped=[{"file": "x.png", "reason": "truncated"}])
    report.results[1].diagnostics = {"cos_at": np.float64(-0.5), "warnings": ["the text adapter has overwhelmed"]}
    d = to_json(report)
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN or Infinity
    back = json.loads(text)
    assert back == d
    assert back["meta"]["data_root"] == "/data/mvtec_ad"  # Path -> str
    assert back["meta"]["settings"]["seeds"] == [0, 1]  # tuple -> list
    assert back["meta"]["lr"] == 0.5  # numpy scalar -> float
    assert len(back["results"]) == 8
    r0 = back["results"][0]
    assert r0["scores"] == [0.1, 0.3, 0.6, 0.9] and r0["labels"] == [0, 0, 1, 1]
    assert r0["logits"] == [-2.2, -0.85, 0.4, 2.2]
    assert r0["metrics"]["auroc"] == 0.9
    assert r0["diagnostics"] is None and back["results"][1]["diagnostics"]["cos_at"] == -0.5
    assert len(back["summary"]) == 6
    # from_json rebuilds the report (e.g. to redraw figures)
    again = from_json(back)
    assert again.results == report.results
    assert again.skipped == report.skipped
    assert to_json(again) == d


def test_from_json_rejects_other_documents():
    with pytest.raises(FsacError, match="not an fsac evaluation report"):
        from_json({"results": []})


def test_markdown_contents():
    report = hand_report(skipped=[
        {"file": "bottle/test/good/003.png", "reason": "cannot identify image file"},
        {"file": "odd|name.png", "reason": "truncated"},
    ])
    md = to_markdown(report)
    assert "| category | shots | seeds | I-AUROC | I-AUPR | F1-max |" in md
    assert "96.0 ± 1.0" in md and "**90.5 ± 3.0**" in md
    assert "## Runs" in md and "| bottle | 1 | 1 | 97.0 | 94.0 | 89.0 |" in md
    # meta, flattened
    assert "**backbone.arch**: `ViT-B-16-plus-240`" in md
    assert "ab" * 32 in md and "**fsac_version**: `0.1.0`" in md
    # skipped files, listed, with table-breaking characters escaped
    assert "## Skipped images (2)" in md
    assert "| bottle/test/good/003.png | cannot identify image file |" in md
    assert "odd\\|name.png" in md


def test_skipped_files_are_never_lost():
    skipped = [{"file": "pipe_staple/test/defect/007.png", "reason": "truncated PNG"}]
    report = hand_report(skipped=skipped)
    assert "pipe_staple/test/defect/007.png" in to_markdown(report)
    assert to_json(report)["skipped"] == skipped
    assert "1 test image could not be read" in format_table(report)
    assert "## Skipped images (0)" in to_markdown(hand_report())
    assert "could not be read" not in format_table(hand_report())


def test_random_weights_warning_in_all_outputs():
    report = hand_report(random_weights=True)
    table, md, js = format_table(report), to_markdown(report), to_json(report)
    lines = table.splitlines()
    assert lines[0] == "!" * 88 and lines[1].startswith(f"!! {WARNING_KEY}: ")  # at the very top
    warning_lines = lines[1:lines.index("!" * 88, 1)]
    assert " ".join(ln[3:] for ln in warning_lines) == RANDOM_WEIGHTS_WARNING
    assert all(len(ln) <= 88 for ln in warning_lines)
    assert "PIPELINE CHECK ONLY" in table
    assert md.splitlines()[2] == f"> **⚠ {RANDOM_WEIGHTS_WARNING}**"
    assert js["random_weights"] is True and js["warning"] == RANDOM_WEIGHTS_WARNING
    assert list(js)[:3] == ["schema", "random_weights", "warning"]
    for text in (table, md, json.dumps(js)):
        assert "measure nothing about detection quality" in text
        assert "accuracy" not in text.lower()  # never called accuracy


def test_no_warning_with_real_weights():
    report = hand_report(random_weights=False)
    js = to_json(report)
    assert js["random_weights"] is False and js["warning"] is None
    for text in (format_table(report), to_markdown(report), json.dumps(js)):
        assert WARNING_KEY not in text
        assert "measure nothing" not in text


# -------------------------------------------------------------------------- figures


def _check_png(path: Path, min_bytes: int = 8_000) -> tuple[int, int]:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes, f"{path.name}: only {len(data)} bytes"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = synthetic_report()
    return report, out, write_report(report, out)


def test_write_report_writes_everything(written):
    report, out, paths = written
    assert set(paths) == {"json", "markdown", "roc", "scores_hist"}
    assert {k: p.name for k, p in paths.items()} == {
        "json": "report.json", "markdown": "report.md", "roc": "roc.png", "scores_hist": "scores_hist.png",
    }
    assert all(p.parent == out and p.is_file() for p in paths.values())
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries behind
    d = json.loads(paths["json"].read_text())
    assert from_json(d).results == report.results
    assert "truncated PNG" in paths["markdown"].read_text()
    w, h = _check_png(paths["roc"])
    assert w >= 600 and h >= 250  # 3 category panels side by side
    _check_png(paths["scores_hist"])


def test_plots_with_random_weights_and_options(tmp_path):
    report = synthetic_report(random_weights=True)
    _check_png(plot_roc(report, tmp_path / "roc.png", all_seeds=False))
    _check_png(plot_score_histogram(report, tmp_path / "h0.png", shots=0, seed=2))
    with pytest.raises(FsacError, match="no runs with shots=8"):
        plot_score_histogram(report, tmp_path / "h8.png", shots=8)


def test_write_report_with_no_runs(tmp_path):
    # Every test image unreadable: the report must still be written, listing them.
    report = EvalReport(skipped=[{"file": "a.png", "reason": "cannot decode"}], meta={"fsac_version": "0.1.0"})
    paths = write_report(report, tmp_path / "nested" / "out")
    assert "a.png" in paths["markdown"].read_text()
    _check_png(paths["roc"], min_bytes=1_000)
    _check_png(paths["scores_hist"], min_bytes=1_000)
