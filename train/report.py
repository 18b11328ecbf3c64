"""Evaluation results -> what the user sees: terminal table, report.json, report.md, ROC
curves and score histograms.

Units: metrics are stored as fractions in [0, 1] (`ImageMetrics`, `SummaryRow`, JSON) and
shown in percent with one decimal in the table and Markdown ("95.5 ± 0.4", paper style).
Every run keeps, per test image, the anomaly logit z (`logits`: what metrics, ROC curves,
histograms and thresholds are computed from, see `fsac.score`) and the score AS = sigmoid(z)
(`scores`, for people; it saturates at 0 and 1, so it is never ranked).

Honesty rule: a run with a randomly initialised backbone (`EvalReport.random_weights`)
only shows that the pipeline runs end to end. Every output (table, Markdown, JSON, figures)
then carries `RANDOM_WEIGHTS_WARNING` at the top, so the numbers cannot be mistaken for
detection quality.

The figures (ROC curves, histograms) are drawn by `fsac.train.report_figures`, report.md is
written by `fsac.train.report_markdown`.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_json, atomic_write_text
from fsac.metrics import ImageMetrics

__all__ = [
    "RANDOM_WEIGHTS_WARNING",
    "EvalReport",
    "RunResult",
    "SummaryRow",
    "format_table",
    "from_json",
    "summarize",
    "to_json",
    "write_report",
]

RANDOM_WEIGHTS_WARNING = (
    "RANDOM BACKBONE WEIGHTS: these numbers measure nothing about detection quality. "
    "The backbone was randomly initialised; the figures only check that the pipeline runs "
    "end to end. Do not quote them as results."
)
REPORT_SCHEMA = "fsac.eval_report/2"
AVERAGE = "average"  # category label of the per-shots average rows
STD_DDOF = 0  # population std over the seeds actually run: one seed -> std 0, not NaN


@dataclass
class RunResult:
    """One evaluation run: one category, one shots setting, one seed.

    shots: reference images per category (0 = zero-shot baseline, no reference images).
    logits, scores, labels, image_names: one entry per test image, same order (labels 1 =
    anomalous); `metrics` were computed from the logits. image_names may be left empty. train_images: the few-shot reference images
    of this run (empty for shots = 0). shot_copies: images left out of this run's test set
    because they have the bytes of one of its shots (a copy of a training image is not a test).
    """

    category: str
    shots: int
    seed: int
    metrics: ImageMetrics
    logits: list[float]
    scores: list[float]
    labels: list[int]
    image_names: list[str] = field(default_factory=list)
    train_images: list[str] = field(default_factory=list)
    # What training did (fsac.train.diagnostics.training_diagnostics, with its warnings); empty for
    # shots = 0, which trains nothing.
    diagnostics: dict = field(default_factory=dict)
    shot_copies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Accept numpy arrays / Paths from the caller, but store plain JSON-able lists.
        self.shots = int(self.shots)
        self.seed = int(self.seed)
        self.logits = [float(v) for v in np.asarray(self.logits, dtype=np.float64).ravel()]
        self.scores = [float(v) for v in np.asarray(self.scores, dtype=np.float64).ravel()]
        self.labels = [int(v) for v in np.asarray(self.labels).ravel()]
        self.image_names = [str(v) for v in self.image_names]
        self.train_images = [str(v) for v in self.train_images]
        self.shot_copies = [str(v) for v in self.shot_copies]
        where = f"run {self.category}/{self.shots}-shot/seed {self.seed}"
        if len(self.scores) != len(self.labels) or len(self.logits) != len(self.labels):
            raise FsacError(f"{where}: {len(self.logits)} logits and {len(self.scores)} scores but "
                            f"{len(self.labels)} labels")
        if self.image_names and len(self.image_names) != len(self.scores):
            raise FsacError(
                f"{where}: {len(self.image_names)} image names but {len(self.scores)} scores"
            )

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.category, self.shots, self.seed)


@dataclass
class EvalReport:
    """Everything one evaluation produced.

    skipped: [{"file": path, "reason": why}] for test images that could not be read; they
    are listed in every report, never silently dropped. meta: backbone arch, weights id and
    sha256, fsac version, settings... (any JSON-able values). random_weights: the backbone
    was randomly initialised (pipeline check; see RANDOM_WEIGHTS_WARNING).
    """

    results: list[RunResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    random_weights: bool = False


@dataclass(frozen=True)
class SummaryRow:
    """Mean and std over seeds for one (category, shots); fractions in [0, 1].

    std uses ddof=0 (population std of the seeds run), so one seed gives 0. For the
    average row (is_average, category "average"): mean = mean over categories of the
    per-category means; std = std over seeds of the category-averaged metric, which needs
    every category to have run the same seeds, else it is None (shown "n/a").
    """

    category: str
    shots: int
    n_seeds: int
    auroc: float
    auroc_std: float | None
    aupr: float
    aupr_std: float | None
    f1_max: float
    f1_max_std: float | None
    is_average: bool = False


_METRICS = (("auroc", "I-AUROC"), ("aupr", "I-AUPR"), ("f1_max", "F1-max"))


def run_groups(report: EvalReport) -> tuple[list[str], list[int], dict[tuple[str, int], list[RunResult]]]:
    """-> (categories in first-seen order, shots ascending, {(category, shots): runs by seed})."""
    categories: list[str] = []
    groups: dict[tuple[str, int], list[RunResult]] = {}
    seen: set[tuple[str, int, int]] = set()
    for r in report.results:
        if r.key in seen:
            # Averaging a run twice would silently bias the mean.
            raise FsacError(f"duplicate run in report: {r.category}, {r.shots}-shot, seed {r.seed}")
        seen.add(r.key)
        if r.category not in categories:
            categories.append(r.category)
        groups.setdefault((r.category, r.shots), []).append(r)
    for runs in groups.values():
        runs.sort(key=lambda r: r.seed)
    shots = sorted({s for _, s in groups})
    return categories, shots, groups


def summarize(report: EvalReport) -> list[SummaryRow]:
    """Per (category, shots): mean ± std over seeds of I-AUROC, I-AUPR, F1-max.

    Rows are ordered by shots (ascending); within a shots setting, categories in the order
    they first appear in `report.results`, then one average row (see `SummaryRow`).
    Fractions in [0, 1]; std with ddof=0.
    """
    categories, all_shots, groups = run_groups(report)
    rows: list[SummaryRow] = []
    for shots in all_shots:
        cats = [c for c in categories if (c, shots) in groups]
        means: dict[str, list[float]] = {m: [] for m, _ in _METRICS}
        for c in cats:
            runs = groups[(c, shots)]
            vals = {m: np.array([getattr(r.metrics, m) for r in runs]) for m, _ in _METRICS}
            for m, _ in _METRICS:
                means[m].append(float(vals[m].mean()))
            rows.append(
                SummaryRow(
                    category=c,
                    shots=shots,
                    n_seeds=len(runs),
                    **{m: float(vals[m].mean()) for m, _ in _METRICS},
                    **{f"{m}_std": float(vals[m].std(ddof=STD_DDOF)) for m, _ in _METRICS},
                )
            )
        seed_sets = [tuple(r.seed for r in groups[(c, shots)]) for c in cats]
        same_seeds = all(s == seed_sets[0] for s in seed_sets)
        stds: dict[str, float | None] = {}
        for m, _ in _METRICS:
            if same_seeds:
                # (n_categories, n_seeds) -> category average per seed -> spread over seeds
                table = np.array([[getattr(r.metrics, m) for r in groups[(c, shots)]] for c in cats])
                stds[f"{m}_std"] = float(table.mean(axis=0).std(ddof=STD_DDOF))
            else:
                stds[f"{m}_std"] = None
        rows.append(
            SummaryRow(
                category=AVERAGE,
                shots=shots,
                n_seeds=len(seed_sets[0]) if same_seeds else max(len(s) for s in seed_sets),
                **{m: float(np.mean(means[m])) for m, _ in _METRICS},
                **stds,
                is_average=True,
            )
        )
    return rows


def pct_text(mean: float, std: float | None) -> str:
    """0.955, 0.004 -> "95.5 ± 0.4" (percent, one decimal)."""
    sd = "n/a" if std is None else f"{100 * std:.1f}"
    return f"{100 * mean:.1f} ± {sd}"


def _shots_label(shots: int) -> str:
    return "0 (zero-shot)" if shots == 0 else str(shots)


def _table_cells(rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    header = ["category", "shots", "seeds"] + [name for _, name in _METRICS]
    body = [
        [r.category, _shots_label(r.shots), str(r.n_seeds)]
        + [pct_text(getattr(r, m), getattr(r, f"{m}_std")) for m, _ in _METRICS]
        for r in rows
    ]
    return header, body


def _skipped_line(report: EvalReport) -> str | None:
    n = len(report.skipped)
    if not n:
        return None
    return f"{n} test image{'s' if n != 1 else ''} could not be read and {'were' if n != 1 else 'was'} skipped (listed in report.md / report.json)"


def format_table(report: EvalReport) -> str:
    """Fixed-width terminal table: one line per (shots, category) plus averages, metrics in
    percent with one decimal, "mean ± std" over seeds."""
    lines: list[str] = []
    if report.random_weights:
        bar = "!" * 88
        # wrapped so the warning stays inside the bar on an 88+ column terminal
        lines += [bar, *(f"!! {ln}" for ln in textwrap.wrap(RANDOM_WEIGHTS_WARNING, len(bar) - 3)), bar]
        lines.append("Image-level anomaly classification: PIPELINE CHECK ONLY (random backbone weights)")
    else:
        lines.append("Image-level anomaly classification")
    lines.append("percent, mean ± std over seeds (std ddof=0)")
    rows = summarize(report)
    if not rows:
        lines.append("(no evaluation runs)")
    else:
        header, body = _table_cells(rows)
        widths = [max(len(x) for x in col) for col in zip(header, *body)]

        def fmt(cells: list[str]) -> str:
            # text columns left-aligned, numbers right-aligned
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        rule = "-" * len(fmt(header))
        lines += [rule, fmt(header), rule]
        prev = None
        for r, cells in zip(rows, body):
            if prev is not None and r.shots != prev:
                lines.append(rule)
            lines.append(fmt(cells))
            prev = r.shots
        lines.append(rule)
    skipped = _skipped_line(report)
    if skipped:
        lines.append(f"NOTE: {skipped}")
    if report.random_weights:
        lines.append(f"!! {RANDOM_WEIGHTS_WARNING.split(':')[0]}: not a measure of detection quality")
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, Paths, tuples, sets and dataclasses."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    return obj


def to_json(report: EvalReport) -> dict:
    """Everything, as plain JSON types: warning (None unless random weights), meta, summary
    rows (fractions), skipped files and every run with its per-image logits, scores, labels and
    names (so figures can be redrawn with `from_json`)."""
    return {
        "schema": REPORT_SCHEMA,
        "random_weights": bool(report.random_weights),
        "warning": RANDOM_WEIGHTS_WARNING if report.random_weights else None,
        "units": "metrics are fractions in [0, 1], computed from the logits; std over seeds with ddof=0; "
                 "shots 0 = zero-shot; logit z = (sim_anomalous - sim_normal) / tau, score = sigmoid(z)",
        "meta": _jsonable(report.meta),
        "summary": [asdict(r) for r in summarize(report)],
        "skipped": _jsonable(report.skipped),
        "results": [
            {
                "category": r.category,
                "shots": r.shots,
                "seed": r.seed,
                "metrics": r.metrics.to_dict(),
                "train_images": list(r.train_images),
                "shot_copies": list(r.shot_copies),
                "image_names": list(r.image_names),
                "labels": list(r.labels),
                "logits": list(r.logits),
                "scores": list(r.scores),
                "diagnostics": _jsonable(r.diagnostics) if r.diagnostics else None,
            }
            for r in report.results
        ],
    }


def from_json(d: dict) -> EvalReport:
    """Inverse of `to_json` (summary and warning are derived, so they are not read back)."""
    if d.get("schema") != REPORT_SCHEMA:
        raise FsacError(f"not an fsac evaluation report (schema {d.get('schema')!r}, expected {REPORT_SCHEMA!r})")
    return EvalReport(
        results=[
            RunResult(
                category=r["category"],
                shots=r["shots"],
                seed=r["seed"],
                metrics=ImageMetrics.from_dict(r["metrics"]),
                logits=r["logits"],
                scores=r["scores"],
                labels=r["labels"],
                image_names=r.get("image_names", []),
                train_images=r.get("train_images", []),
                shot_copies=r.get("shot_copies", []),
                diagnostics=r.get("diagnostics") or {},
            )
            for r in d.get("results", [])
        ],
        skipped=list(d.get("skipped", [])),
        meta=dict(d.get("meta", {})),
        random_weights=bool(d.get("random_weights", False)),
    )


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md, roc.png, scores_hist.png into `out_dir` (atomically)
    -> {"json", "markdown", "roc", "scores_hist"}: paths. The data files go first, so
    a plotting failure cannot lose them."""
    out = Path(out_dir)
    from fsac.train.report_figures import plot_roc, plot_score_histogram
    from fsac.train.report_markdown import to_markdown

    paths = {
        "json": atomic_write_json(out / "report.json", to_json(report)),
        "markdown": atomic_write_text(out / "report.md", to_markdown(report)),
        "roc": plot_roc(report, out / "roc.png"),
        "scores_hist": plot_score_histogram(report, out / "scores_hist.png"),
    }
    return paths
