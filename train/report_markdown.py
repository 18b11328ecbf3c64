"""report.md of `fsac eval`: the summary and per-run tables, the setup, training warnings
and skipped files, from an `EvalReport` (train/report.py)."""

from __future__ import annotations

import json
from typing import Any

from fsac.train.report import RANDOM_WEIGHTS_WARNING, EvalReport, _jsonable, _table_cells, summarize


def _md_cell(text: Any) -> str:
    # A "|" or newline inside a cell would break the Markdown table.
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def to_markdown(report: EvalReport) -> str:
    """report.md: warning (random weights), summary table, per-run table, meta, skipped files."""
    md: list[str] = ["# fsac evaluation report", ""]
    if report.random_weights:
        md += [f"> **⚠ {RANDOM_WEIGHTS_WARNING}**", ""]
    md += [
        "## Image-level anomaly classification" + (" (pipeline check only)" if report.random_weights else ""),
        "",
        "Percent, mean ± std over seeds (std with ddof=0). Shots 0 is the zero-shot baseline.",
        "",
    ]
    rows = summarize(report)
    if rows:
        header, body = _table_cells(rows)
        md.append("| " + " | ".join(header) + " |")
        md.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        for r, cells in zip(rows, body):
            if r.is_average:
                cells = [f"**{c}**" for c in cells]
            md.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    else:
        md.append("No evaluation runs.")
    md.append("")

    if report.results:
        md += [
            "## Runs",
            "",
            "| category | shots | seed | I-AUROC | I-AUPR | F1-max | F1 threshold | normal | anomalous |",
            "|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(report.results, key=lambda r: (r.shots, r.category, r.seed)):
            m = r.metrics
            md.append(
                f"| {_md_cell(r.category)} | {r.shots} | {r.seed} | {100 * m.auroc:.1f} | {100 * m.aupr:.1f} "
                f"| {100 * m.f1_max:.1f} | {m.f1_threshold:.4g} | {m.n_normal} | {m.n_anomalous} |"
            )
        md += ["", "Per-image logits and scores, and the reference images of each run, are in report.json. "
               "Metrics are computed from the logits (the score saturates).", ""]
        copied = [r for r in report.results if r.shot_copies]
        if copied:
            md += ["Left out of a run's test set because they have the bytes of one of its shots (a copy of a "
                   "training image is no test):", ""]
            md += [f"- {_md_cell(r.category)}, {r.shots} shots, seed {r.seed}: "
                   + ", ".join(f"`{_md_cell(n)}`" for n in r.shot_copies) for r in copied]
            md.append("")

    md += ["## Setup", ""]
    meta = _flatten(_jsonable(report.meta))
    md += [f"- **{_md_cell(k)}**: `{_md_cell(json.dumps(v) if not isinstance(v, str) else v)}`" for k, v in meta]
    md.append(f"- **random_weights**: `{str(bool(report.random_weights)).lower()}`")
    md.append("")

    warned = [(r, w) for r in report.results for w in (r.diagnostics or {}).get("warnings", [])]
    if warned:
        md += [f"## Training warnings ({len(warned)})", ""]
        md += [f"- {_md_cell(r.category)} k={r.shots} seed={r.seed}: {_md_cell(w)}" for r, w in warned]
        md += ["", "Every trained model's diagnostics (cos(AT+, AT-), adapter ratio, pair gap) are in report.json.", ""]

    md += [f"## Skipped images ({len(report.skipped)})", ""]
    if report.skipped:
        md += ["These test images could not be read and are not part of any metric above.", ""]
        md += ["| file | reason |", "|:---|:---|"]
        md += [
            f"| {_md_cell(s.get('file', '?'))} | {_md_cell(s.get('reason', '?'))} |" for s in report.skipped
        ]
    else:
        md.append("None: every test image was read.")
    md.append("")
    return "\n".join(md)
