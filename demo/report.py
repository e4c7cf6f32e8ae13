"""The demo report: results.json, PNG charts and one self-contained report.html."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from egodistill.cache.jsonio import write_json  # noqa: E402
from egodistill.student.plots import reliability_diagram  # noqa: E402


def write_report(out: Path, results: dict, raw: dict) -> Path:
    """Write results.json, the charts and report.html into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results, default=str)
    charts = {
        "accuracy_calibration.png": _students_chart(results, out / "accuracy_calibration.png"),
        "missing_modalities.png": _subsets_chart(results, out / "missing_modalities.png"),
        "timings.png": _timings_chart(results, out / "timings.png"),
    }
    for name in ("rgb-gt", results["claims"]["paper1"]["best_scheme"]):
        evaluation = raw["students"][name]["runs"][0]["evaluation"]
        path = out / f"reliability_{name}.png"
        charts[path.name] = reliability_diagram(evaluation["subsets"][0]["reliability"], path, f"{name} (seed {raw['students'][name]['runs'][0]['seed']})")
    report = out / "report.html"
    report.write_text(_html(results, charts))
    return report


def _students_chart(results: dict, path: Path) -> Path:
    names = list(results["students"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((a, "top1", "top-1 accuracy (%)"), (b, "ece", "ECE x100 (lower is better)")):
        means = [results["students"][n][metric]["mean"] for n in names]
        stds = [results["students"][n][metric]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=["#888"] + ["#4a7"] * 3 + ["#47a"] * 2)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(label)
    fig.suptitle("Students on the validation split (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _subsets_chart(results: dict, path: Path) -> Path:
    models = ["mm-unmasked", "mm-masked"]
    subsets = list(results["students"][models[0]]["subsets"])
    x = np.arange(len(subsets))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, name in enumerate(models):
        s = results["students"][name]["subsets"]
        ax.bar(x + (i - 0.5) * 0.4, [s[k]["top1"]["mean"] for k in subsets], 0.4, yerr=[s[k]["top1"]["std"] for k in subsets], capsize=3, label=name)
    ax.set_xticks(x, subsets, rotation=30, ha="right")
    ax.set(ylabel="top-1 accuracy (%)", title="Missing modalities at test time: every subset of the inputs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _timings_chart(results: dict, path: Path) -> Path:
    t = results["timings"]
    labels = [f"extract {m}" for m in t["extract"]] + ["fit teachers"] + [f"student {n}" for n in results["students"]]
    values = list(t["extract"].values()) + [t["fit_teachers"]] + [results["students"][n]["seconds"]["mean"] for n in results["students"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(labels[::-1], values[::-1], color=["#47a"] * len(results["students"]) + ["#aa4"] + ["#a44"] * len(t["extract"]))
    ax.set_xlabel("seconds (student runs: mean over seeds)")
    ax.set_title("Wall time per stage: teachers run once, students many times")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pm(stat: dict, digits: int = 1) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _html(results: dict, charts: dict[str, Path]) -> str:
    c1, c2 = results["claims"]["paper1"], results["claims"]["paper2"]
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(s['title'])}</td><td>{_pm(s['top1'])}</td><td>{_pm(s['ece'])}</td><td>{_pm(s['seconds'])}</td></tr>"
        for n, s in results["students"].items()
    )
    teachers = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['top1']:.1f}</td><td>{v['ece']:.1f}</td></tr>" for k, v in results["teachers"].items())
    subset_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_pm(results['students']['mm-unmasked']['subsets'][k]['top1'])}</td><td>{_pm(v['top1'])}</td></tr>"
        for k, v in results["students"]["mm-masked"]["subsets"].items()
    )
    commands = "".join(f"<li><code>{html.escape(cmd)}</code></li>" for cmd in results["commands"])
    t = results["timings"]
    verdict1 = "holds" if c1["holds"] else "does not hold"
    verdict2 = "holds" if c2["holds"] else ("holds on average only" if c2["holds_mean"] else "does not hold")
    d = c2["drops"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>egodistill demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%;display:block;margin:1em 0}}code{{font-size:85%}}.claim{{background:#f4f4f0;padding:0.6em 1em;border-left:4px solid #888}}</style>
</head><body>
<h1>egodistill demo</h1>
<p>{html.escape(results['data']['description'])} Teachers are small timm backbones with <b>random initialisation and fixed seeds</b>
({html.escape(', '.join(f"{m}: {b}" for m, b in results['backbones'].items()))}); with real pretrained weights
use <code>egodistill extract --weights FILE</code> (README). Students: {len(results['seeds'])} seeds ({', '.join(map(str, results['seeds']))}), same budget each.</p>

<h2>The two claims</h2>
<div class="claim"><b>Paper 1 (Radevski et al.)</b>: {html.escape(c1['claim'])}<br>
Ground-truth RGB student: top-1 {c1['ground_truth']['top1']:.1f} %, ECE {c1['ground_truth']['ece']:.1f}.
Distilled: {html.escape('; '.join(f"{k}: top-1 {v['top1']:.1f} %, ECE {v['ece']:.1f}" for k, v in c1['distilled'].items()))}.<br>
<b>Verdict: the claim {verdict1}</b>{html.escape(' (for ' + ', '.join(c1['schemes_where_it_holds']) + ')' if c1['holds'] else '')}.
{html.escape(results['explanations']['paper1'])}</div>
<div class="claim"><b>Paper 2 (KARMMA)</b>: {html.escape(c2['claim'])}<br>
Unmasked: all inputs {d['mm-unmasked']['full']:.1f} %, mean drop {d['mm-unmasked']['mean_drop']:.1f} points, worst drop {d['mm-unmasked']['worst_drop']:.1f}.
Masked: all inputs {d['mm-masked']['full']:.1f} %, mean drop {d['mm-masked']['mean_drop']:.1f} points, worst drop {d['mm-masked']['worst_drop']:.1f}.<br>
<b>Verdict: the claim {verdict2}</b>. {html.escape(results['explanations']['paper2'])}</div>

<h2>Students (validation, mean ± std over seeds)</h2>
<table><tr><th>student</th><th>what</th><th>top-1 %</th><th>ECE x100</th><th>train s</th></tr>{rows}</table>
{_img(charts['accuracy_calibration.png'], 'accuracy and calibration of every student')}
<h2>Teachers (validation; fitted on cached features, cross-fitted on training segments)</h2>
<table><tr><th>teacher</th><th>top-1 %</th><th>ECE x100</th></tr>{teachers}</table>
<h2>Reliability</h2>
{''.join(_img(p, n) for n, p in charts.items() if n.startswith('reliability_'))}
<h2>Missing-modality matrix</h2>
<table><tr><th>inputs at test time</th><th>unmasked top-1 %</th><th>masked top-1 %</th></tr>{subset_rows}</table>
{_img(charts['missing_modalities.png'], 'accuracy per input subset')}
<h2>Where the time goes</h2>
<p>Data generation {t['generate']:.1f} s; extraction (once; {'reused from the cache this run' if t['extraction_reused'] else 'this run'}):
{html.escape(', '.join(f"{m} {s:.1f} s" for m, s in t['extract_first'].items()))}; fitting teachers {t['fit_teachers']:.1f} s;
one student run {results['student_run_seconds']:.1f} s on average. One student run / extraction = <b>{results['ratio_student_run_over_extraction']:.3f}</b>.</p>
{_img(charts['timings.png'], 'wall time per stage')}
<h2>Reproduce</h2>
<ol>{commands}</ol>
</body></html>
"""
