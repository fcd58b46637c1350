"""The drift report: one self-contained HTML file (inline CSS, figures as PNG data URIs, no external URL).

It shows what a :class:`~care_companion.monitoring.drift.DriftWindow` check found on a set of inputs: the
verdict, each test family's raw and Holm-adjusted p-value, per-feature distributions, the embedding projection,
the class mix, confidences, rejections, the naive KL baseline, the files that could not be read, and the model
and reference the inputs were compared with.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from care_companion import REVIEW_WARNING
from care_companion.monitoring import report_plots
from care_companion.monitoring.drift import FAMILIES, DriftStatus, Observation
from care_companion.monitoring.profile import ReferenceProfile

DRIFT_IS_NOT_A_FINDING = (
    "Drift is a warning about the data, not about any patient. It says these images differ from the ones the "
    "model was trained and validated on, so its measured sensitivity and specificity may not hold for them. "
    "It makes no finding about any patient or image."
)

FAMILY_INFO: dict[str, tuple[str, str]] = {
    "features": ("Do the images look different (intensity, size, edges)?", "two-sample KS per feature, Holm within"),
    "embedding": ("Does the model see them differently?", "MMD on PCA-reduced embeddings, permutation p-value"),
    "class_mix": ("Are the decisions distributed differently from validation?", "chi-square goodness of fit"),
    "confidence": ("Is the model less (or more) sure?", "two-sample KS on the decided class's probability"),
    "rejections": ("Are more inputs refused as not images of the task?", "one-sided exact binomial test"),
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1.5em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;
font-size:.92em}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{padding:1em 1.2em;border-radius:6px;margin:1em 0;font-size:1.1em}
.drift{background:#fde2e1;border:1px solid #e0827d}.ok{background:#e3f4e1;border:1px solid #8cc785}
.unknown{background:#eee;border:1px solid #bbb}.note{background:#fff7e0;border:1px solid #e8c95c;padding:.8em 1em;
border-radius:6px}.flag{color:#b3261e;font-weight:600}.muted{color:#666}img{max-width:100%}
"""


class SkippedFile(BaseModel):
    """A file of the folder that could not be used, and why (``reason`` as the decoder's stable code)."""

    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class ReportContext:
    """Where the report's inputs came from."""

    model: str  # the reference as given (bundle folder or registry URI)
    bundle_dir: str
    model_version: str | None
    task: str
    precision: str
    dataset_version: str
    folder: str
    files: int  # candidate image files found
    permutations: int
    reject_class: str | None = None  # the task's "not an image of the task" class, if it has one
    view: str | None = None  # the view every image was taken as (multi-view models)


def _e(value: object) -> str:
    return html.escape(str(value))


def format_p(value: float | None) -> str:
    """A p-value for people: scientific below 0.001, three decimals above, "not run" for none."""
    if value is None:
        return "not run"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if k in numeric else ''}>{cell}</td>" for k, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _verdict(status: DriftStatus) -> str:
    if status.drifted is None:
        return (
            '<div class="verdict unknown"><b>Not tested.</b> Too few images for any test family '
            f"(each needs at least {status.min_images}).</div>"
        )
    if status.drifted:
        families = ", ".join(status.flagged)
        return (
            f'<div class="verdict drift"><b>Drift found</b> in: {_e(families)} (Holm-adjusted p-value at most '
            f"{status.alpha:g}).</div>"
        )
    return (
        '<div class="verdict ok"><b>No drift found.</b> No test family is significant at a family-wise '
        f"false-alarm rate of {status.alpha:g}.</div>"
    )


def _not_run_reason(family: str, status: DriftStatus, task_has_reject: bool) -> str:
    if family == "rejections" and not task_has_reject:
        return "the task has no reject class"
    if family == "embedding" and status.window_images >= status.min_images:
        return "the model has no embedding output"
    return f"fewer than {status.min_images} usable images"


def _families(status: DriftStatus, task_has_reject: bool) -> str:
    rows = []
    for family in FAMILIES:
        question, method = FAMILY_INFO[family]
        raw, adjusted = status.raw_p_values.get(family), status.p_values.get(family)
        if raw is None:
            outcome = f'<span class="muted">not run: {_e(_not_run_reason(family, status, task_has_reject))}</span>'
        elif family in status.flagged:
            outcome = '<span class="flag">drift</span>'
        else:
            outcome = "no drift"
        rows.append([f"<b>{_e(family)}</b>", _e(question), _e(method), format_p(raw), format_p(adjusted), outcome])
    return _table(["family", "question", "test", "raw p", "Holm-adjusted p", "result"], rows, numeric=(3, 4))


def _features(status: DriftStatus, profile: ReferenceProfile, current: np.ndarray) -> str:
    if not status.features:
        return f'<p class="muted">Not run: fewer than {status.min_images} images of the task.</p>'
    alpha = status.alpha
    rows = [
        [
            _e(f.name),
            f"{f.statistic:.3f}",
            format_p(f.p_value),
            format_p(f.adjusted) + (' <span class="flag">&#9650;</span>' if f.adjusted <= alpha else ""),
            f"{f.reference_median:.4g}",
            f"{f.current_median:.4g}",
        ]
        for f in status.features
    ]
    table = _table(
        ["feature", "KS statistic", "raw p", "Holm-adjusted p (within features)", "reference median", "current median"],
        rows,
        numeric=(1, 2, 3, 4, 5),
    )
    figure = report_plots.feature_ecdfs(
        profile.features, current, profile.feature_names, [f.statistic for f in status.features]
    )
    return (
        table + "<p>Empirical cumulative distributions, reference (training images) against current; the KS statistic "
        "is the largest vertical gap between the two curves.</p>" + _img(figure, "feature distributions")
    )


def _embedding(status: DriftStatus, profile: ReferenceProfile, current: np.ndarray, precision: str) -> str:
    reference = profile.reference_embeddings(precision)
    if not len(current):
        return '<p class="muted">No embeddings (the model has no embedding output, or every input was rejected).</p>'
    text = (
        f"<p>MMD statistic {_num(status.embedding_statistic, 4)} on {profile.pca_components.shape[0]} principal "
        f"components ({100 * float(profile.pca_explained.sum()):.0f}% of the training embeddings' variance); "
        f"the reference is the validation studies' embeddings from the {_e(precision)} model.</p>"
    )
    figure = report_plots.embedding_scatter(reference[:, :2], current[:, :2], profile.pca_explained)
    return text + _img(figure, "embedding projection")


def _distribution(title: str, status: DriftStatus, which: str, ylabel: str) -> str:
    found = status.class_mix if which == "class_mix" else status.confidence
    if found is None:
        return f'<p class="muted">No {_e(title)}.</p>'
    rows = [[_e(b), f"{r:.3f}", f"{c:.3f}"] for b, r, c in zip(found.bins, found.reference, found.current, strict=True)]
    figure = report_plots.grouped_bars(found.bins, found.reference, found.current, ylabel)
    return _table(["bin", "reference share", "current share"], rows, numeric=(1, 2)) + _img(figure, title)


def _skipped(skipped: Sequence[SkippedFile]) -> str:
    if not skipped:
        return "<p>None: every image file could be read.</p>"
    rows = [[_e(s.path), _e(s.reason), _e(s.detail)] for s in skipped]
    return _table(["file", "reason", "detail"], rows)


def render_report(
    *,
    status: DriftStatus,
    profile: ReferenceProfile,
    observations: Sequence[Observation],
    context: ReportContext,
    skipped: Sequence[SkippedFile] = (),
) -> str:
    """The report as one HTML document (see the module docstring)."""
    images = [item for item in observations if not item.rejected]
    rows = [vector for item in images for vector in item.features]
    current_features = np.stack(rows) if rows else np.zeros((0, len(profile.feature_names)))
    vectors = [item.embedding for item in images if item.embedding is not None]
    current_embeddings = profile.project(np.stack(vectors)) if vectors else np.zeros((0, 2))
    rejected = sum(item.rejected for item in observations)
    model_rows = [
        ["model", _e(context.model)],
        ["bundle folder", _e(context.bundle_dir)],
        ["registry version", _e(context.model_version or "n/a (bundle folder)")],
        ["task", _e(context.task)],
        ["model file run", _e(context.precision)],
        ["trained on data-set version", _e(context.dataset_version or "unknown")],
    ]
    reference_rows = [[_e(name), str(value)] for name, value in sorted(profile.counts.items())]
    data_rows = [
        ["folder", _e(context.folder)],
        ["image files found", str(context.files)],
        ["skipped (not readable)", str(len(skipped))],
        ["inputs tested", str(status.window_inputs)],
        ["rejected as not an image of the task", str(rejected)],
        ["images of the task (features, embeddings)", str(status.window_images)],
    ]
    if context.view:
        data_rows.append(["each image taken as view", _e(context.view)])
    confidence_mean = status.confidence_mean
    rejection = status.rejection_rate
    written = datetime.now(UTC).isoformat(timespec="seconds")
    sections = [
        f"<h1>Drift report: {_e(context.task)}</h1>",
        f'<p class="muted">Checked {_e(status.checked_at)}; written {_e(written)} by care-companion.</p>',
        _verdict(status),
        f'<p class="note">{_e(DRIFT_IS_NOT_A_FINDING)} {_e(REVIEW_WARNING)}</p>',
        "<h2>Test families</h2>",
        f"<p>Five families of tests, combined with Holm's correction so that the whole verdict's false-alarm rate is "
        f"{status.alpha:g} when nothing has changed. Each family needs at least {status.min_images} inputs "
        f"(images of the task for features, embedding and confidence).</p>",
        _families(status, context.reject_class is not None),
        "<h2>Image features</h2>",
        _features(status, profile, current_features),
        "<h2>Embedding projection</h2>",
        _embedding(status, profile, current_embeddings, context.precision),
        "<h2>Class mix</h2>",
        "<p>Share of inputs decided as each class (the reject class included), against validation.</p>",
        _distribution("class mix", status, "class_mix", "share of inputs"),
        "<h2>Confidence</h2>",
        f"<p>Calibrated probability of the decided class, inputs not rejected. Mean: reference "
        f"{_num(confidence_mean.get('reference'))}, current {_num(confidence_mean.get('current'))}.</p>",
        _distribution("confidence histogram", status, "confidence", "share of images"),
        "<h2>Rejection rate</h2>",
        f"<p>Inputs refused as not being an image of the task: reference (validation) "
        f"{_num(rejection.get('reference'))}, current {_num(rejection.get('current'))} "
        f"({rejected} of {status.window_inputs}); p-value {format_p(status.raw_p_values.get('rejections'))}.</p>",
        "<h2>KL baseline</h2>",
        f"<p>KL divergence of the current mean intensity histogram from the reference: "
        f"<b>{_num(status.kl_baseline, 4)}</b> nats. A naive baseline shown for comparison only: it has no "
        "threshold and takes no part in the verdict.</p>",
        "<h2>Skipped files</h2>",
        _skipped(skipped),
        "<h2>Model and reference</h2>",
        _table(["", ""], model_rows),
        "<p>Reference profile counts (what each part of the reference was computed on):</p>",
        _table(["part", "count"], reference_rows, numeric=(1,)),
        "<h2>Data checked</h2>",
        _table(["", ""], data_rows),
        f'<p class="muted">alpha {status.alpha:g}; at least {status.min_images} inputs per family; '
        f"{context.permutations} permutations for the embedding test; check took {_num(status.check_ms, 1)} ms.</p>",
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Drift report: {_e(context.task)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_report(
    path: Path,
    *,
    status: DriftStatus,
    profile: ReferenceProfile,
    observations: Sequence[Observation],
    context: ReportContext,
    skipped: Sequence[SkippedFile] = (),
) -> Path:
    """Write the report to ``path`` (atomically) and return it."""
    text = render_report(status=status, profile=profile, observations=observations, context=context, skipped=skipped)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
