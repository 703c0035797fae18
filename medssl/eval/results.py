"""Results bookkeeping: one JSON list of rows per bundle, summarised into the bundle's README table.

Each row is one number: ``{"task", "label_fraction", "seed", "init", "metric", "value", "split_file",
"command"}`` (extra keys are kept). :func:`append_result` adds rows atomically (and under a file lock, so
parallel seeds can append to the same file); :func:`render_results_table` rewrites the Markdown table
between ``<!-- results:start -->`` and ``<!-- results:end -->`` with mean ± std over seeds.

Command line: ``python -m medssl.eval.results BUNDLE_DIR`` renders ``BUNDLE_DIR/docs/results.json``
into ``BUNDLE_DIR/docs/README.md``; ``--plot METRIC PNG`` also draws the label-efficiency curve of one metric
(:func:`plot_label_curve`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medssl.ssl.checkpoint import atomic_write_json, atomic_write_text

__all__ = [
    "REQUIRED_KEYS",
    "START_MARKER",
    "END_MARKER",
    "validate_row",
    "load_results",
    "append_result",
    "summarise",
    "format_table",
    "render_results_table",
    "plot_label_curve",
    "main",
]

REQUIRED_KEYS = ("task", "label_fraction", "seed", "init", "metric", "value", "split_file", "command")
START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"

_STR_KEYS = ("task", "init", "metric", "split_file", "command")


def validate_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Check a result row and return a normalised copy.

    Raises:
        ValueError: a key is missing, or a value has the wrong type or range (``label_fraction`` in
            ``(0, 1]``, integer ``seed``, finite numeric ``value``, non-empty strings).
    """
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"result row misses key(s): {', '.join(missing)}")
    out = dict(row)
    for k in _STR_KEYS:
        if not isinstance(row[k], str) or not row[k].strip():
            raise ValueError(f"result row: {k!r} must be a non-empty string, got {row[k]!r}")
    lf = row["label_fraction"]
    if isinstance(lf, bool) or not isinstance(lf, int | float) or not 0 < float(lf) <= 1:
        raise ValueError(f"result row: 'label_fraction' must be a number in (0, 1], got {lf!r}")
    out["label_fraction"] = float(lf)
    seed = row["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"result row: 'seed' must be an integer, got {seed!r}")
    value = row["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"result row: 'value' must be a finite number, got {value!r}")
    out["value"] = float(value)
    return out


def load_results(results_json: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a results file (an empty list when it does not exist)."""
    path = Path(results_json)
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8") or "[]")
    if isinstance(data, Mapping):
        data = data.get("rows", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of result rows")
    return [dict(r) for r in data]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def append_result(results_json: str | os.PathLike[str], row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``row`` and append it to the JSON list in ``results_json`` (atomic, file-locked).

    A row with the same ``(task, label_fraction, seed, init, metric)`` as an existing one replaces it, so a
    re-run does not count twice.

    Returns:
        The normalised row as stored.
    """
    clean = validate_row(row)
    path = Path(results_json)
    key = _identity(clean)
    with _locked(path):
        rows = [r for r in load_results(path) if _identity(r) != key]
        rows.append(clean)
        atomic_write_json(path, rows)
    return clean


def _identity(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["task"], float(row["label_fraction"]), int(row["seed"]), row["init"], row["metric"])


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per ``(task, label_fraction, init, metric)``.

    Returns:
        Rows ``{"task", "label_fraction", "init", "metric", "mean", "std", "n", "seeds"}`` sorted by task,
        metric (in order of first appearance, so each task's headline metric comes first), label fraction and
        init; ``std`` is the sample standard deviation (0 for one seed).
    """
    groups: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
    metric_order: dict[tuple[str, str], int] = {}
    for r in rows:
        r = validate_row(r)
        metric_order.setdefault((r["task"], r["metric"]), len(metric_order))
        key = (r["task"], r["label_fraction"], r["init"], r["metric"])
        groups.setdefault(key, []).append((r["seed"], r["value"]))
    out = []
    for (task, lf, init, metric), vals in groups.items():
        values = [v for _, v in vals]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        out.append(
            {
                "task": task,
                "label_fraction": lf,
                "init": init,
                "metric": metric,
                "mean": mean,
                "std": std,
                "n": n,
                "seeds": sorted(s for s, _ in vals),
            }
        )
    out.sort(key=lambda s: (s["task"], metric_order[(s["task"], s["metric"])], s["label_fraction"], s["init"]))
    return out


def _fraction(lf: float) -> str:
    pct = lf * 100
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 1e-9 else f"{pct:.3g}%"


def format_table(summary: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A Markdown table of :func:`summarise`'s output."""
    lines = [
        "| Task | Labels | Init | Metric | Mean ± std | n |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for s in summary:
        lines.append(
            f"| {s['task']} | {_fraction(s['label_fraction'])} | {s['init']} | {s['metric']} | "
            f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} | {s['n']} |"
        )
    if not summary:
        lines.append("| _no results yet_ | | | | | |")
    return "\n".join(lines)


def render_results_table(
    results_json: str | os.PathLike[str], readme_md: str | os.PathLike[str], digits: int = 3
) -> str:
    """Rewrite the table between the results markers in ``readme_md`` from ``results_json`` (atomically).

    Returns:
        The new table.

    Raises:
        ValueError: the README lacks the markers (in order).
    """
    readme = Path(readme_md)
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"{readme}: needs {START_MARKER} ... {END_MARKER} markers")
    table = format_table(summarise(load_results(results_json)), digits=digits)
    new = text[: start + len(START_MARKER)] + "\n" + table + "\n" + text[end:]
    if new != text:
        atomic_write_text(readme, new)
    return table


def plot_label_curve(
    results_json: str | os.PathLike[str], metric: str, png: str | os.PathLike[str], task: str | None = None,
    title: str | None = None,
) -> Path:
    """Draw mean ± std of ``metric`` against the label fraction, one line per initialisation (PNG, atomic).

    Args:
        results_json: a bundle's results file.
        metric: the metric to draw (e.g. ``"dice"``).
        png: output file.
        task: the task to draw (default: the first task that has ``metric``).
        title: figure title (default: ``"<task>: <metric>"``).

    Returns:
        The written path.

    Raises:
        ValueError: no row has ``metric`` (for ``task``).
    """
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [s for s in summarise(load_results(results_json)) if s["metric"] == metric]
    task = task or (summary[0]["task"] if summary else None)
    summary = [s for s in summary if s["task"] == task]
    if not summary:
        raise ValueError(f"{results_json}: no rows with metric {metric!r}" + (f" for task {task!r}" if task else ""))
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for init in sorted({s["init"] for s in summary}):
        pts = sorted((s["label_fraction"], s["mean"], s["std"], s["n"]) for s in summary if s["init"] == init)
        x = [p[0] * 100 for p in pts]
        y = [p[1] for p in pts]
        e = [p[2] for p in pts]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=init)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title or f"{task}: {metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medssl.eval.results BUNDLE_DIR [--results PATH] [--readme PATH] [--plot METRIC PNG]``."""
    parser = argparse.ArgumentParser(prog="python -m medssl.eval.results", description=main.__doc__)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--results", type=Path, default=None, help="default BUNDLE_DIR/docs/results.json")
    parser.add_argument("--readme", type=Path, default=None, help="default BUNDLE_DIR/docs/README.md")
    parser.add_argument("--plot", nargs=2, action="append", default=[], metavar=("METRIC", "PNG"),
                        help="also draw METRIC against the label fraction into PNG (repeatable)")
    args = parser.parse_args(argv)
    results = args.results or args.bundle_dir / "docs" / "results.json"
    readme = args.readme or args.bundle_dir / "docs" / "README.md"
    try:
        table = render_results_table(results, readme)
        for metric, png in args.plot:
            plot_label_curve(results, metric, png)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
