"""``report.html`` built straight from a run folder: self-contained HTML and CSS, no script.

It opens with what was run and the headline (measured against target, one line on what each
row means), then T2 as a method x operator matrix, T1 and T4 compact, each beside the figures
that support it; long tables are collapsed or linked as CSV.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from partslib.io import atomic_write, read_json
from partslib.report.headline import Run, headline_table, read_run
from partslib.report.style import CSS as _CSS
from partslib.report.tables import (
    DASH,
    fmt,
    html_table,
    t1_compact,
    t2_details,
    t2_matrix,
    t4_compact,
)

__all__ = ["build_report", "write_report"]



def _png_for(path: Path, width: int) -> bytes:
    """The PNG at ``path``, reduced to twice the width it is shown at (sharp on high-density
    screens) when it is wider: the page embeds what it shows, not the full-size figure, which
    stays linked beside it."""
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if im.width <= 2 * width:
            return data
        h = round(im.height * 2 * width / im.width)
        out = io.BytesIO()
        small = im.convert("RGB").resize((2 * width, h), Image.Resampling.LANCZOS)
        # a 256-colour palette: figures are flat colours and text, and compress far better
        small.quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _figure(run: Run, rel: str, caption: str, embed: bool, width: int = 560) -> str:
    path = run.path / rel
    if not path.is_file():
        return ""
    if embed:
        src = "data:image/png;base64," + base64.b64encode(_png_for(path, width)).decode("ascii")
    else:
        src = escape(rel)
    return (f"<figure style='max-width:{width}px'><img src='{src}' alt='{escape(caption)}'>"
            f"<figcaption>{escape(caption)} <a href='{escape(rel)}'>{escape(rel)}</a>"
            f"</figcaption></figure>")


def _link(run: Run, rel: str, text: str | None = None) -> str:
    if not (run.path / rel).is_file():
        return ""
    return f"<a class='csv' href='{escape(rel)}'>{escape(text or rel)}</a>"


def _csv(run: Run, rel: str) -> pd.DataFrame | None:
    path = run.path / rel
    return pd.read_csv(path) if path.is_file() else None


def _yes(value: Any) -> str:
    return {True: "yes", False: "no"}.get(value, DASH) if isinstance(value, bool) else DASH


def _verdict(table: pd.DataFrame) -> str:
    """One sentence: how many targets are met, and which rows miss."""
    rows = table.to_dict("records")
    counted = [r for r in rows if r["counted"]]
    met = sum(r["met"] == "yes" for r in counted)
    measured = sum(r["met"] != DASH for r in counted)
    def describe(r: dict) -> str:
        return escape(f"{r['what']} ({r['measured']}, target {r['target']})")

    missed = [describe(r) for r in counted if r["met"] == "no"]
    below = [describe(r) for r in rows if not r["counted"] and r["met"] == "no"]
    text = f"<b>{met} of {measured} measured targets met.</b>"
    if measured < len(counted):
        text += f" {len(counted) - measured} not measured."
    if missed:
        text += " Missed: " + "; ".join(missed) + "."
    if below:
        text += " Also below its target (shown beside a target, not counted): " \
            + "; ".join(below) + "."
    return f"<p class='verdict'>{text}</p>"


def _facts(run: Run) -> str:
    """The "what was run" block: profile, data, models, date, machine, wall time."""
    m, t = run.metrics, run.timings or {}
    versions = (read_json(run.path / "summary" / "params.json") or {}).get("versions") or {}
    machine = (read_json(run.path / "bench.json") or {}).get("machine") or {}
    cpu = machine.get("cpu")
    cores = machine.get("cpus_usable") or machine.get("cpu_count") or t.get("cpu_count")

    def n(key: str, spec: str = ",") -> str:
        return fmt(m.get(key), spec)

    size = m.get("data/image_size")
    facts = [
        ("profile", f"<b>{escape(run.profile)}</b>"),
        ("data", f"SynthParts: {n('data/n_train')} training / {n('data/n_val')} validation / "
                 f"{n('data/n_test')} test images, "
                 f"{fmt(size, 'd')}×{fmt(size, 'd')}, {n('data/num_classes')} classes, "
                 f"{n('data/num_parts')} parts"),
        ("models", f"classifier: small ResNet, {n('classifier/num_parameters')} parameters, "
                   f"{n('classifier/epochs')} epochs · PDM: {n('pdm/num_parameters')} "
                   f"parameters, {n('pdm/epochs')} epochs, classifier frozen (logits "
                   f"unchanged: {_yes(m.get('pdm/classifier_unchanged'))})"
                   + _removal_note(m)),
        ("date", escape(str(t.get("started", DASH)).replace("T", " "))),
        ("machine", ", ".join(x for x in (escape(str(cpu)) if cpu else "",
                                          f"{cores} cores" if cores else "",
                                          f"Python {t['python']}" if t.get("python") else "",
                                          f"torch {versions['torch']}"
                                          if versions.get("torch") else "") if x) or DASH),
        ("wall time", f"<b>{run.wall_minutes:.1f} min</b> · {escape(run.wall_note)}"
         if run.wall_minutes is not None else f"<b>not measured</b> · "
                                               f"{escape(run.wall_note)}"),
    ]
    stages = (t.get("stages") or {})
    if stages:
        facts.append(("stages", " · ".join(f"{escape(k)} {v:.0f} s" for k, v in stages.items()
                                           if v is not None)))
    facts += [("note", escape(x)) for x in run.notes]
    return "<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + \
        "</dl>"


def _headline(run: Run) -> tuple[str, str]:
    """The verdict sentence and the headline table (the default rule's rows beside the
    flattering ones)."""
    table = headline_table(run.metrics)
    rows = ["<tr><th class='left'>what</th><th>measured</th><th>ceiling, same operator</th>"
            "<th>target</th><th>met</th></tr>"]
    for r in table.to_dict("records"):
        met = {"yes": "met", "no": "missed"}.get(r["met"], "none")
        cls = "" if r["counted"] else "beside"
        tag = "" if r["counted"] else " <span class='tag'>beside the row above, not counted</span>"
        rows.append(f"<tr class='{cls}'><td class='left'><span class='what'>"
                    f"{escape(r['what'])}</span>{tag}<span class='meaning'>"
                    f"{escape(r['meaning'])}</span></td>"
                    f"<td class='num big'>{escape(r['measured'])}</td>"
                    f"<td class='num'>{escape(r.get('ceiling', ''))}</td>"
                    f"<td class='num'>{escape(r['target'])}</td>"
                    f"<td class='{met}'>{escape(r['met'])}</td></tr>")
    return _verdict(table), "<table class='headline'>" + "".join(rows) + "</table>"


def _t2(run: Run, embed: bool) -> str:
    t2 = _csv(run, "validity/t2.csv")
    if t2 is None:
        return "<p>T2 was not computed in this run.</p>"
    best = run.metrics.get("validity/best_pdm_mode")
    n_img = run.metrics.get("validity/n_images")
    intro = (f"<p class='lead'>For each of {fmt(n_img, 'd')} correctly classified test images, "
             f"every present part is removed and the drop of the class logit measured. "
             f"<b>ρ</b>: mean per-image Spearman correlation between the parts' claimed "
             f"contributions and these measured drops (1 = same ranking, 0 = none). "
             f"<b>decisive</b>: share of images whose top-ranked part is one that defines the "
             f"class; compare it with the ceiling the measured effects reach under the same "
             f"operator. <b>Read the re-render column first</b>: it is the exact "
             f"counterfactual; the imputers are how removal works on real photos, and blur "
             f"favours the occlusion rule, whose own claim is a blur.</p>")
    side = _figure(run, "validity/scatter.png", "Claimed contribution against measured "
                   "removal effect, one panel per method (re-render).", embed, 900)
    more = (f"<details><summary>more T2 columns (top part, error, deletion AUC) · "
            f"{_link(run, 'validity/t2.csv')} {_link(run, 'validity/per_image.csv')}</summary>"
            f"{t2_details(t2)}"
            f"<div class='figs'>"
            f"{_figure(run, 'validity/deletion.png', 'Deletion curves (V3).', embed)}"
            f"{_figure(run, 'validity/sanity.png', 'Randomisation sanity check (V5).', embed)}"
            f"</div></details>")
    return intro + t2_matrix(t2, best=best) + side + more


def _t1(run: Run, embed: bool) -> str:
    t1 = _csv(run, "baselines/t1.csv")
    if t1 is None:
        return "<p>T1 was not computed in this run.</p>"
    main, per_part = t1_compact(t1)
    intro = ("<p class='lead'>How accurately each method locates the parts on the test images: "
             "<b>part mIoU</b> of the part maps against the true masks; <b>pointing game</b>: "
             "the map's peak falls in the right part; <b>decisive region</b>: the same for "
             "the class's decisive part.</p>")
    figs = _figure(run, "baselines/localization.png", "Parts found by PDM, IBD, Grad-CAM.",
                   embed, 520)
    return (intro + f"<div class='row'><div>{main}</div>{figs}</div>"
            f"<details><summary>IoU per part · {_link(run, 'baselines/t1.csv')}</summary>"
            f"{per_part}"
            f"{_figure(run, 'pdm/segmentations.png', 'PDM segmentations.', embed)}</details>")


def _t4(run: Run) -> str:
    t4 = _csv(run, "benchmark/t4.csv")
    if t4 is None:
        return "<p>T4 was not computed in this run.</p>"
    return ("<p class='lead'>Minimum wall time over the benchmark's repeats; the machines are "
            "shared, so read the ratios to a plain forward pass, not the milliseconds.</p>"
            + t4_compact(t4) + f"<p>{_link(run, 'benchmark/t4.csv')} "
            f"{_link(run, 'bench.json', 'bench.json (samples, memory, machine)')}</p>")


def _config(run: Run) -> str:
    params = {p.parent.name: (read_json(p) or {}).get("parameters", {})
              for p in sorted(run.path.glob("*/params.json"))}
    if not params:
        return ""
    rows = [{"stage": s, "parameter": k, "value": str(v)} for s, ps in params.items()
            for k, v in ps.items() if k not in ("results_dir", "data_dir")]
    versions = (read_json(run.path / "summary" / "params.json") or {}).get("versions") or {}
    vtable = html_table(pd.DataFrame({"library": list(versions),
                                      "version": [str(v) for v in versions.values()]})) \
        if versions else ""
    return (f"<details><summary>configuration of every stage and library versions</summary>"
            f"<div class='row'>{html_table(pd.DataFrame(rows), cls='long')}{vtable}</div>"
            f"</details>")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _seeds(run: Run) -> str:
    """The headline's quality rows over training seeds, when the seeds profile ran beside this
    run (``results/seeds/seeds.csv``); empty otherwise."""
    from partslib.report.seeds import headline_rows

    path = run.path.parent / "seeds" / "seeds.csv"
    if not path.is_file():
        return ""
    table = pd.read_csv(path, index_col="metric")
    seeds = [c.removeprefix("seed=") for c in table.columns if c.startswith("seed=")]
    rows = "".join(f"<tr><td>{escape(label)}</td><td class='num'>{escape(ms)}</td>"
                   f"<td class='num'>{escape(rng)}</td><td class='num'>{n}</td></tr>"
                   for label, ms, rng, n in headline_rows(table))
    return (f"<section><h2>Seeds · the headline over training seeds {', '.join(seeds)}</h2>"
            f"<p>The same study (data unchanged) with the classifier, PDM, IBD and T2 seeded "
            f"{len(seeds)} ways (<code>scripts/study.sh seeds</code>): mean ± sample sd.</p>"
            f"<table><tr><th>what</th><th>mean ± sd</th><th>min – max</th><th>seeds</th></tr>"
            f"{rows}</table><p>{escape(_shown(path))}</p></section>")


def _removal_note(m: dict) -> str:
    """The classifier's training and T2's ground truth, when it was trained with removal."""
    frac = m.get("classifier/removal_fraction") or 0.0
    if not frac:
        return ""
    truth = ("sufficient part sets" if m.get("validity/ground_truth_sufficient")
             else "decisive parts")
    return (f" · in-domain removal training: {frac:g} of the training images re-rendered "
            f"without some labels, trained against the classes still consistent; T2's "
            f"decisive-part columns score against the {truth}")


def _funnybirds(run: Run, embed: bool) -> str:
    """The FunnyBirds checks (Com / Cor / Con per rule, ground-truth parts beside the found
    ones) of this run, or of the funnybirds profile run beside it; empty when neither ran."""
    for rel in ("validity", "../funnybirds/validity"):
        path = run.path / rel / "funnybirds.csv"
        if path.is_file():
            break
    else:
        return ""
    df = pd.read_csv(path)
    wide = df.pivot_table(index="method", columns="parts", values=["Com", "Cor", "Con"],
                          sort=False)
    head = "".join(f"<th>{c} ({p})</th>" for c in ("Com", "Cor", "Con") for p in ("gt", "pdm"))
    rows = "".join(
        f"<tr><td>{escape(str(m))}</td>" + "".join(
            f"<td class='num'>{_num(wide.loc[m].get((c, p)))}</td>"
            for c in ("Com", "Cor", "Con") for p in ("gt", "pdm")) + "</tr>"
        for m in wide.index)
    spider = _figure(run, f"{rel}/funnybirds_spider.png", "Spider plot of the checks, "
                     "ground-truth parts and the PDM's parts.", embed, 520)
    return (f"<section><h2>FunnyBirds checks · ground-truth parts (gt) and the parts each "
            f"method finds (pdm)</h2><p>Com = ((CSDC + PC + DC)/3 + D)/2, Cor = SD (single "
            f"deletion), Con = TS (target sensitivity); targets for the default rule: Com ≥ "
            f"0.90, Cor ≥ 0.85, Con ≥ 0.90. From <code>{escape(_shown(path))}</code> "
            f"(every check and threshold there).</p><div class='row'><div><table><tr>"
            f"<th>method</th>{head}</tr>{rows}</table></div>{spider}</div></section>")


def _num(value: object) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v else f"{v:.3f}"


def build_report(run_dir: str | Path, embed: bool = True) -> str:
    """The report of a run folder as one HTML page (figures embedded as base64 PNG when
    ``embed``, else linked relative to the run folder)."""
    run = read_run(run_dir)
    verdict, headline = _headline(run)
    when = _dt.datetime.now().isoformat(timespec="seconds").replace("T", " ")
    gallery = _figure(run, "explanations/gallery_correct.png",
                      "Each row: an image, the PDM's parts, each part's contribution to the "
                      "predicted class (region rule).", embed, 480)
    body = [
        f"<header><h1>partslib study · profile <code>{escape(run.profile)}</code></h1>"
        f"<p>Explanations of a CNN classifier by its segmented semantic parts, checked by "
        f"removing the parts. Rendered {when} from <code>{escape(_shown(run.path))}</code>."
        f"</p>"
        f"</header>",
        f"<section><h2>What was run</h2>{_facts(run)}</section>",
        f"<section><h2>Headline: measured against the targets</h2>{verdict}<div class='row'>"
        f"<div>{headline}</div>{gallery}</div></section>",
        _seeds(run),
        f"<section><h2>T2 · Do the claimed part contributions match what removing the part "
        f"does?</h2>{_t2(run, embed)}</section>",
        _funnybirds(run, embed),
        f"<section><h2>T1 · Localisation of parts</h2>{_t1(run, embed)}</section>",
        f"<section><h2>T4 · Cost against a forward pass</h2>{_t4(run)}</section>",
        f"<section><h2>Configuration</h2>{_config(run)}"
        f"<p>All metrics: {_link(run, 'metrics.json')} · stage times: "
        f"{_link(run, 'timings.json')}</p></section>",
    ]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>partslib study · {escape(run.profile)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 embed: bool = True) -> Path:
    """Write :func:`build_report` to ``out`` (default ``run_dir/report.html``); returns it."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    html = build_report(run_dir, embed=embed)
    with atomic_write(out) as tmp:
        tmp.write_text(html)
    return out
