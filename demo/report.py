"""The demo report: results.json, PNG charts (error bars are 95 % bootstrap intervals) and one self-contained report.html."""

from __future__ import annotations

import base64
import html
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from egodistill.common import write_json  # noqa: E402
from egodistill.demo.protocol import protocol_doc  # noqa: E402
from egodistill.student.metrics import reliability  # noqa: E402
from egodistill.student.plots import reliability_diagram  # noqa: E402

VERDICT_COLOURS = {"holds": "#2a7", "does not hold": "#c33", "inconclusive": "#999"}
RGB_ARMS = ["rgb-gt", "rgb-kd-uniform", "rgb-kd-per-sample", "rgb-kd-dataset"]
MM_ARMS = ["mm-unmasked", "mm-masked", "mm-masked-gt"]
E2E_ARMS = ["e2e-gt", "e2e-kd-uniform"]  # protocol version 3, under `egodistill demo --finetune`
UNLABELLED_ARMS = ["rgb-gt", "rgb-kd-uniform", "rgb-kd-uniform-unl"]  # version 4's arm beside the two it is read against


def write_report(out: Path, results: dict, per_seed: list[dict], labels: dict[str, np.ndarray]) -> Path:
    """Write results.json, the charts and report.html into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    seed0 = per_seed[0]
    curves = {name: {"action": reliability(seed0["students"][name]["frames8"], labels["val"])} for name in ("rgb-gt", "rgb-kd-uniform")}
    results["reliability"] = {"seed": seed0["seed"], "bins": curves}  # the diagrams' bars, so results.json holds every number shown
    write_json(out / "results.json", results)
    doc = protocol_doc()
    if doc is not None:
        shutil.copyfile(doc, out / "demo-protocol.md")
    charts = {
        "claims.png": _claims_chart(results, out / "claims.png"),
        "paper1.png": _paper1_chart(results, out / "paper1.png"),
        "frames.png": _frames_chart(results, out / "frames.png"),
        "subsets.png": _subsets_chart(results, out / "subsets.png"),
        "timings.png": _timings_chart(results, out / "timings.png"),
    }
    for name, curve in curves.items():
        path = out / f"reliability_{name}.png"
        charts[path.name] = reliability_diagram(curve, path, f"{name}, seed {seed0['seed']}, validation")
    report = out / "report.html"
    report.write_text(_html(results, charts, doc is not None))
    return report


# --- charts --------------------------------------------------------------------------------

def _bar_errors(stats: list[dict]) -> tuple[list[float], np.ndarray]:
    values = [s["estimate"] for s in stats]
    errors = np.array([[s["estimate"] - s["lo"] for s in stats], [s["hi"] - s["estimate"] for s in stats]])
    return values, np.maximum(errors, 0)


def _claims_chart(results: dict, path: Path) -> Path:
    """Every primary claim's improvement with its 95 % interval, one panel per unit; 0 and the margin marked."""
    rows = [c for c in results["claims"] if c["primary"] and "improvement" in c]
    units = list(dict.fromkeys(c["unit"] for c in rows))
    groups = [[c for c in rows if c["unit"] == u] for u in units]
    fig, axes = plt.subplots(len(units), 1, figsize=(10, 0.5 * len(rows) + 1.2 * len(units)), squeeze=False,
                             gridspec_kw={"height_ratios": [len(g) + 1 for g in groups]})
    for ax, unit, group in zip(axes[:, 0], units, groups):
        for i, c in enumerate(group):
            imp = c["improvement"]
            ax.errorbar([imp["estimate"]], [i], xerr=[[max(imp["estimate"] - imp["lo"], 0)], [max(imp["hi"] - imp["estimate"], 0)]],
                        fmt="o", color=VERDICT_COLOURS.get(c["verdict"], "#999"), capsize=4)
            ax.plot([-c["margin"] if c["id"].startswith("P2.4") else c["margin"]], [i], marker="|", markersize=16, color="#333")
        ax.axvline(0, color="#333", lw=1)
        ax.set_yticks(range(len(group)), [f"{c['id']}: {c['verdict']}" for c in group])
        ax.set_ylim(len(group) - 0.5, -0.5)
        ax.set_xlabel(f"improvement in the claim's favour, {unit}")
    axes[0, 0].set_title("Primary claims, 95 % intervals over clips and seeds (| = margin; green holds, red does not hold, grey inconclusive)", fontsize=10)
    return _save(fig, path)


def _paper1_chart(results: dict, path: Path) -> Path:
    arms = RGB_ARMS + ["ensemble-uniform", "rgb"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, metric, label in zip(axes, ("top1", "ece", "nll"), ("top-1 %", "ECE x100 (lower is better)", "NLL, nats (lower is better)")):
        stats = [results["students"][a]["metrics"][metric] if a in results["students"] else results["teachers"][a][metric] for a in arms]
        values, errors = _bar_errors(stats)
        ax.bar(range(len(arms)), values, yerr=errors, capsize=4, color=["#888", "#4a7", "#8c8", "#8c8", "#c96", "#ca6"])
        ax.set_xticks(range(len(arms)), [a if a != "rgb" else "rgb teacher" for a in arms], rotation=30, ha="right")
        ax.set_ylabel(label)
    fig.suptitle("Paper 1: RGB students and their teachers on validation (bars: mean over seeds; error bars: 95 % intervals)")
    return _save(fig, path)


def _frames_chart(results: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (arm, style) in enumerate(zip(RGB_ARMS, ("o-", "s-", "^:", "v:"))):
        frames = results["students"][arm]["frames"]
        ks = sorted(frames, key=int, reverse=True)
        values, errors = _bar_errors([frames[k]["top1"] for k in ks])
        x = np.arange(len(ks)) + (i - 1.5) * 0.06  # side by side, so the intervals do not hide each other
        ax.errorbar(x, values, yerr=errors, fmt=style, capsize=3, label=arm, alpha=1.0 if arm in RGB_ARMS[:2] else 0.5)
    ax.set_xticks(range(len(ks)), ks)
    ax.set(xlabel="frames at test time (every student trained with 8)", ylabel="top-1 %", title="Paper 1: fewer frames at test time (95 % intervals)")
    ax.legend(loc="lower left")
    return _save(fig, path)


def _subsets_chart(results: dict, path: Path) -> Path:
    subsets = list(results["students"]["mm-masked"]["subsets"])
    x = np.arange(len(subsets))
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, arm in enumerate(MM_ARMS):
        values, errors = _bar_errors([results["students"][arm]["subsets"][s]["top1"] for s in subsets])
        ax.bar(x + (i - 1) * 0.27, values, 0.27, yerr=errors, capsize=3, label=arm)
    fusion = results["teachers"]["fusion"]["top1"]
    ax.axhspan(fusion["lo"], fusion["hi"], color="#c96", alpha=0.25, label="fusion teacher, all inputs (interval)")
    ax.set_xticks(x, subsets, rotation=30, ha="right")
    ax.set(ylabel="top-1 %", title="Paper 2: every subset of the inputs at test time (95 % intervals)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _timings_chart(results: dict, path: Path) -> Path:
    t = results["timings"]
    labels = ["generate", "generate unlabelled", "manifest windows"] + [f"extract {m}" for m in t["extract_first"]] + ["fit teachers (one seed)", "one student run", "all seeds (wall)", "statistics"]
    values = [t["generate"], t["generate_unlabelled"], t["windows"], *t["extract_first"].values(), t["fit_teachers_mean"], t["student_run_mean"], t["seeds_wall"], t["statistics"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(labels[::-1], values[::-1], color="#47a")
    ax.set_xlabel("seconds")
    ax.set_title("Wall time per stage: teachers run once, students many times")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- html ----------------------------------------------------------------------------------

def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _ci(stat: dict | None, digits: int = 1) -> str:
    if stat is None:
        return "-"
    return f"{stat['estimate']:.{digits}f} <small>[{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]</small>"


def _metric_cells(m: dict) -> str:
    return f"<td>{_ci(m['top1'])}</td><td>{_ci(m['ece'])}</td><td>{_ci(m['nll'], 3)}</td><td>{_ci(m['brier'], 3)}</td>"


def _verdict(v: str) -> str:
    colour = VERDICT_COLOURS.get(v, "#999")
    return f'<b style="color:{colour}">{html.escape(v)}</b>'


def _claim_rows(claims: list[dict]) -> str:
    rows = []
    for c in claims:
        digits = 3 if c.get("unit") == "nats" else 1
        interval = _ci(c["improvement"], digits) if "improvement" in c else "parts: " + html.escape(", ".join(c["parts"]))
        extra = f"<br><small>FLOPs ratio {c['flops_ratio']:.2f}</small>" if c.get("flops_ratio") is not None else ""
        rows.append(f"<tr><td>{html.escape(c['id'])}</td><td>{html.escape(c['claim'])}<br><small>{html.escape(c['statistic'])}</small></td>"
                    f"<td>{interval}{extra}</td><td>{_margin(c)}</td>"
                    f"<td>{_verdict(c['verdict'])}</td></tr>")
    return "".join(rows)


def _margin(c: dict) -> str:
    """The margin as the rule uses it: +margin for an improvement, -margin for P2.4's accuracy kept."""
    if "improvement" not in c:
        return ""
    sign = "-" if c["id"].startswith("P2.4") else ""
    return f"{sign}{c['margin']:g} {html.escape(c['unit'])}"


def _cost_rows(cost: dict | None) -> str:
    if not cost:
        return ""
    rows = []

    def row(name: str, c: dict) -> None:
        params = "?" if c.get("params") is None else f"{c['params'] / 1e6:.3f} M"
        flops = "?" if c.get("flops") is None else f"{c['flops'] / 1e9:.3f}"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{params}</td><td>{flops}</td></tr>")

    row("RGB student (rgb-kd-uniform), 8 frames", cost["rgb-kd-uniform"]["student"])
    for t in cost["rgb-kd-uniform"]["teachers"]:
        row(f"its teacher {t['teacher']}", t)
    row("masked student (mm-masked), 8 frames", cost["mm-masked"]["student"])
    for t in cost["mm-masked"]["teachers"]:
        row(f"its teacher {t['teacher']}", t)
    for key, c in cost.items():
        if key.startswith("mm-masked@"):
            row(f"masked student reading {key.split('@')[1]} frames", c)
    return "".join(rows)


def _cost_sentence(cost: dict | None) -> str:
    """Paper 1's deployment saving in one sentence: the RGB student against the three teachers it learned from."""
    if not cost:
        return ""
    student, teachers = cost["rgb-kd-uniform"]["student"], cost["rgb-kd-uniform"]["teachers"]
    if student.get("flops") is None or any(t.get("flops") is None for t in teachers):
        return ""
    total = sum(t["flops"] for t in teachers)
    text = (f"The RGB student needs {student['flops'] / 1e9:.2f} GFLOPs per clip, {student['flops'] / total:.2f} of the "
            f"{total / 1e9:.2f} its three teachers need together (paper 1: inference needs RGB only).")
    masked, fusion = cost["mm-masked"]["student"], cost["mm-masked"]["teachers"][0]
    if masked.get("flops") and fusion.get("flops"):
        text += (f" The masked student needs {masked['flops'] / fusion['flops']:.2f} of its fusion teacher's FLOPs: both read the same "
                 "frozen extractors, which cost almost everything, and only their heads differ (P2.4).")
    return text


def _end_to_end_section(results: dict) -> str:
    """Version 3's arms: end-to-end RGB students on the stored frames, and the masked student on smaller extractors."""
    s = results["students"]
    if "e2e-gt" not in s:
        return ("<h2>Version 3: end-to-end students</h2><p>Not run: the end-to-end arms (E1.1, E1.2) cost more than the demo's "
                "10-minute budget; <code>egodistill demo --finetune</code> runs them (and <code>--smaller-student</code> P2.4k's arm).</p>")
    rows = "".join(f"<tr><td>{a}</td><td>{html.escape(s[a]['title'])}</td>{_metric_cells(s[a]['metrics'])}<td>{s[a]['seconds']:.0f} s</td></tr>"
                   for a in ["rgb-gt", "rgb-kd-uniform", *E2E_ARMS])
    ks = list(s["e2e-gt"]["frames"])
    frames = "".join(f"<tr><td>{a}</td>" + "".join(f"<td>{_ci(s[a]['frames'][k]['top1'])}</td>" for k in ks) + "</tr>" for a in E2E_ARMS)
    small = s.get("mm-masked-small")
    small_row = ("<tr><td>mm-masked-small</td><td colspan=6>not run (P2.4k needs <code>--smaller-student</code>)</td></tr>" if small is None else f"<tr><td>mm-masked-small</td><td>{html.escape(small['title'])}</td>{_metric_cells(small['metrics'])}<td>{small['seconds']:.0f} s</td></tr>")
    return f"""<h2>Version 3: end-to-end RGB students on frames (<code>--finetune</code>)</h2>
<p>The same network (the rgb extractor's test_resnet, from its own random-init weights) trained on the stored frames, on ground truth
or distilled from the rgb+flow+audio teachers (uniform, T = 2); the frozen-feature RGB heads beside them. All with all inputs at 8 frames.</p>
<table><tr><th>arm</th><th>what</th><th>top-1 %</th><th>ECE x100</th><th>NLL</th><th>Brier</th><th>training, one seed</th></tr>{rows}{small_row}</table>
<table><tr><th>arm</th>{''.join(f'<th>{k} frames</th>' for k in ks)}</tr>{frames}</table>"""


def _unlabelled_section(results: dict) -> str:
    """Version 4's arm: the primary RGB student distilled with the unlabelled clips in its draw, beside the one without them."""
    s, u = results["students"], results["data"].get("unlabelled")
    if "rgb-kd-uniform-unl" not in s or u is None:
        return ""
    rows = "".join(f"<tr><td>{a}</td><td>{html.escape(s[a]['title'])}</td>{_metric_cells(s[a]['metrics'])}<td>{s[a]['seconds']:.1f} s</td></tr>" for a in UNLABELLED_ARMS)
    ks = list(s["rgb-kd-uniform-unl"]["frames"])
    frames = "".join(f"<tr><td>{a}</td>" + "".join(f"<td>{_ci(s[a]['frames'][k]['top1'])}</td>" for k in ks) + "</tr>" for a in UNLABELLED_ARMS)
    claims = [c for c in results["claims"] if c["id"].startswith("U1")]
    return f"""<h2>Version 4: distillation on unlabelled clips</h2>
<p>{u['clips']} more clips of the same generator (seed {u['seed']}), their labels never written; <code>manifest windows</code> gave
{u['windows']} windows (one per clip), appended to the cache as split <code>{html.escape(u['split'])}</code> and extracted like the others.
<code>rgb-kd-uniform-unl</code> is <code>rgb-kd-uniform</code>'s command plus <code>--unlabelled-split {html.escape(u['split'])}</code>: the
unlabelled clips join its draw with the teachers' uniform ensemble as their only target.</p>
<table><tr><th>arm</th><th>what</th><th>top-1 %</th><th>ECE x100</th><th>NLL</th><th>Brier</th><th>training, one seed</th></tr>{rows}</table>
<table><tr><th>arm</th>{''.join(f'<th>{k} frames</th>' for k in ks)}</tr>{frames}</table>
<table><tr><th>claim</th><th>what</th><th>improvement [95 % interval]</th><th>margin</th><th>verdict</th></tr>{_claim_rows(claims)}</table>"""


def _html(results: dict, charts: dict[str, Path], doc_copied: bool) -> str:
    p, d, t, g = results["protocol"], results["data"], results["timings"], results["gate"]
    primary = [c for c in results["claims"] if c["primary"]]
    secondary = [c for c in results["claims"] if not c["primary"]]
    link = '<a href="demo-protocol.md">demo-protocol.md</a> (a copy of the checkout\'s docs/demo-protocol.md)' if doc_copied else f"{html.escape(p['doc'])} in the egodistill source"
    banner = ("" if p["followed"] else
              f'<p style="background:#fde;padding:0.6em 1em;border-left:4px solid #c33"><b>Not the protocol</b>: {html.escape("; ".join(p["deviations"]))}. '
              "These verdicts decide nothing; run <code>egodistill demo</code> for the protocol's.</p>")
    s = results["students"]
    rgb_rows = "".join(f"<tr><td>{a}</td><td>{html.escape(s[a]['title'])}</td>{_metric_cells(s[a]['metrics'])}</tr>" for a in RGB_ARMS)
    teacher_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{'teacher' if not k.startswith('ensemble') else 'ensemble of the rgb, flow, audio teachers'}</td>{_metric_cells(m)}</tr>"
                           for k, m in results["teachers"].items())
    ks = list(s["rgb-gt"]["frames"])
    frame_rows = "".join(f"<tr><td>{a}</td>" + "".join(f"<td>{_ci(s[a]['frames'][k]['top1'])}</td>" for k in ks) + "</tr>" for a in RGB_ARMS)
    subsets = list(s["mm-masked"]["subsets"])
    subset_rows = "".join(f"<tr><td>{html.escape(x)}</td>" + "".join(f"<td>{_ci(s[a]['subsets'][x]['top1'])}</td>" for a in MM_ARMS)
                          + "".join(f"<td>{_ci(s[a]['subsets'][x]['ece'])}</td>" for a in MM_ARMS) + "</tr>" for x in subsets)
    gate_rows = "".join(f"<tr><td>{html.escape(x['test'])}</td><td>{_ci(x['difference'])}</td><td>{'passed' if x['passed'] else '<b>failed</b>'}</td></tr>" for x in g["tests"])
    oof_rows = ", ".join(f"{html.escape(k)} {_ci(v)}" for k, v in g["top1_out_of_fold"].items())
    weights = results["dataset_weights"]
    weight_text = "; ".join(f"seed {seed}: " + ", ".join(f"{m} {w:.2f}" for m, w in ws.items()) for seed, ws in zip(results["seeds"], weights))
    commands = "".join(f"<li><code>{html.escape(cmd)}</code></li>" for cmd in results["commands"])
    sentences = "".join(f"<li>{html.escape(c['sentence'])}</li>" for c in primary)
    secondary_sentences = "".join(f"<li>{html.escape(c['sentence'])}</li>" for c in secondary)
    b = p["bootstrap"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>egodistill demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
img{{max-width:100%;display:block;margin:1em 0}}code{{font-size:85%}}small{{color:#555}}</style>
</head><body>
<h1>egodistill demo: two papers' claims, tested</h1>
{banner}
<p><b>Protocol</b> version {p['version']}: {link}, fixed and committed before any of these results was computed
(what is compared, the primary scheme <b>{html.escape(p['primary_scheme'])}</b>, seeds, metrics, the test and its margins).
<b>Data</b>: generator version {d['generator_version']}. {html.escape(d['description'])}
Scored: {d['clips_scored']['val']} validation clips; the teacher gate uses {d['clips_scored']['train']} training clips.
Extractors: {html.escape(', '.join(f"{m}: {bb}" for m, bb in results['backbones'].items()))}, random initialisation, run once.
<b>Seeds</b> {', '.join(map(str, results['seeds']))}: each fits the teachers (folds and initialisation) and trains every student.
<b>Intervals</b>: [lo, hi] after each number is a 95 % paired bootstrap interval ({b['draws']} draws of clips and seeds, RNG seed {b['seed']});
a verdict comes from the interval and the margin: holds if the improvement's interval is above 0, does not hold if it is below the margin
without being above 0, inconclusive otherwise.</p>

<h2>Verdicts (primary tests)</h2>
<table><tr><th>claim</th><th>what</th><th>improvement [95 % interval]</th><th>margin</th><th>verdict</th></tr>{_claim_rows(primary)}</table>
<ul>{sentences}</ul>
{_img(charts['claims.png'], 'every primary claim with its interval')}

<h2>Teachers worth learning from? (the gate: training clips' out-of-fold logits only)</h2>
<p>Out-of-fold top-1 on the training clips: {oof_rows} (chance {g['chance']:.1f} %).
Gate <b>{'passed' if g['passed'] else 'FAILED: every distillation verdict is inconclusive'}</b>.</p>
<table><tr><th>test</th><th>difference, points [95 % interval]</th><th></th></tr>{gate_rows}</table>

<h2>Paper 1: an RGB student distilled from rgb + flow + audio teachers</h2>
<table><tr><th>arm</th><th>what</th><th>top-1 %</th><th>ECE x100</th><th>NLL</th><th>Brier</th></tr>{rgb_rows}
<tr><th colspan="6">teachers and their ensembles (validation; fusion reads all three inputs)</th></tr>{teacher_rows}</table>
<p>Dataset-ensemble weights (rgb, flow, audio; from the training clips' out-of-fold logits): {html.escape(weight_text)}.</p>
<p><small>ECE's bootstrap interval can lie above its own estimate: a bin's |accuracy − confidence| only grows with resampling noise,
so binned ECE is biased upwards on resampled clips, most where it is small. The verdicts use the interval of a difference of two
such ECEs, which carries the bias of both.</small></p>
{_img(charts['paper1.png'], 'paper 1 arms with intervals')}
<h3>Fewer frames at test time (the same trained students)</h3>
<table><tr><th>arm</th>{''.join(f'<th>{k} frames</th>' for k in ks)}</tr>{frame_rows}</table>
{_img(charts['frames.png'], 'accuracy against frames at test time')}
<h3>Reliability (seed {results['seeds'][0]})</h3>
{''.join(_img(path, name) for name, path in charts.items() if name.startswith('reliability_'))}

<h2>Paper 2 (KARMMA): one student for every subset of its inputs</h2>
<table><tr><th>inputs at test time</th>{''.join(f'<th>top-1 % {a}</th>' for a in MM_ARMS)}{''.join(f'<th>ECE {a}</th>' for a in MM_ARMS)}</tr>{subset_rows}</table>
{_img(charts['subsets.png'], 'accuracy per input subset with intervals')}
<h3>Cost per clip (evaluate's count: extractor backbones at the rows read, plus the head)</h3>
<table><tr><th>model</th><th>parameters</th><th>GFLOPs</th></tr>{_cost_rows(results.get('cost'))}</table>
<p>{html.escape(_cost_sentence(results.get('cost')))}</p>

{_end_to_end_section(results)}

{_unlabelled_section(results)}

<h2>Secondary tests</h2>
<table><tr><th>claim</th><th>what</th><th>improvement [95 % interval]</th><th>margin</th><th>verdict</th></tr>{_claim_rows(secondary)}</table>
<ul>{secondary_sentences}</ul>

<h2>Where the time goes</h2>
<p>Data generation {t['generate']:.1f} s (unlabelled clips {t['generate_unlabelled']:.1f} s, their windows {t['windows']:.1f} s); extraction (once; {'reused from the cache this run' if t['extraction_reused'] else 'this run'}):
{html.escape(', '.join(f"{m} {x:.1f} s" for m, x in t['extract_first'].items()))}; fitting the four teachers {t['fit_teachers_mean']:.1f} s per seed;
one student run {t['student_run_mean']:.1f} s on average ({t['student_runs']} runs); all seeds {t['seeds_wall']:.1f} s wall in {t['seed_processes']} process(es);
statistics {t['statistics']:.1f} s. One student run / extraction = <b>{results['ratio_student_run_over_extraction']:.3f}</b>.</p>
{_img(charts['timings.png'], 'wall time per stage')}
<h2>Reproduce</h2>
<p>Every logit behind these numbers is in <code>predictions.npz</code>; every number shown is in <code>results.json</code>.</p>
<details><summary>{len(results['commands'])} commands</summary><ol>{commands}</ol></details>
</body></html>
"""
