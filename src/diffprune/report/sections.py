"""The report's sections built from figures and records of the run folders: selection figures, the command,
provenance and config of each run, DRO trajectories, class-wise FID and the evaluation protocol."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from diffprune.report.collect import FULL, ArmResult, RunSummary
from diffprune.report.document import Bullets, Code, Image, Paragraph, Table, fmt
from diffprune.report.plots import classwise_bars


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def selection_blocks(runs: list[RunSummary], out: Path, multi: bool) -> list:
    """Kept / pruned examples and the score histogram of every selection (``selection/<sel>/*.png``)."""
    blocks, seen = [], set()
    for run in runs:
        for a in run.arms:
            sel = a.paths.get("selection")
            if not sel or (run.path / sel) in seen:
                continue
            seen.add(run.path / sel)
            for png, what in (("examples.png", "kept and pruned examples of each class"),
                              ("scores.png", "score histogram")):
                if (run.path / sel / png).is_file():
                    dest = out / f"{Path(png).stem}-{safe_name((run.name + '-' if multi else '') + Path(sel).name)}.png"
                    shutil.copyfile(run.path / sel / png, dest)
                    blocks.append(Image(dest, f"{Path(sel).name}: {what}" + (f" ({run.name})" if multi else "")))
    return blocks or [Paragraph("No selection figures found (written by the select stage).")]


def _command(run: RunSummary) -> dict:
    """``command.json`` of a run (empty when it was not made by the CLI)."""
    cmd = run.path / "command.json"
    return json.loads(cmd.read_text()) if cmd.is_file() else {}


def provenance_lines(runs: list[RunSummary]) -> list[str]:
    """Per run: where and how it ran (devices, processes, precisions, threads, launcher), from command.json."""
    from diffprune.provenance import provenance_line  # it loads torch: only for runs that recorded provenance

    return [f"{run.name + ': ' if len(runs) > 1 else ''}{provenance_line(rec)}" for run in runs
            if (rec := _command(run).get("provenance"))]


def config_blocks(runs: list[RunSummary], out: Path) -> list:
    """The command line that made each run and its resolved ``config.yaml`` (copied beside the report and
    shown in the document itself)."""
    items, configs = [], []
    for run in runs:
        recorded = _command(run)
        command = recorded.get("command") or " ".join(recorded.get("argv", []))
        line = f"{run.name}: `{command}`" if command else f"{run.name}: command not recorded (not run by the CLI)"
        if (run.path / "config.yaml").is_file():
            dest = out / f"config-{safe_name(run.name)}.yaml"
            shutil.copyfile(run.path / "config.yaml", dest)
            line += f"; resolved config: [{dest.name}]({dest.name})"
            configs.append(Code(dest.read_text(), f"{dest.name} (resolved config of {run.name})", "yaml"))
        items.append(line)
    return [Bullets(items), *configs]


def trajectories(runs: list[RunSummary], out: Path, multi: bool) -> list:
    """The DRO weight trajectory of every reweighted arm (``reweight/<selection>/trajectory.png``)."""
    blocks, seen = [], set()
    for run in runs:
        for a in run.arms:
            src = run.path / a.paths["reweight"] / "trajectory.png" if a.paths.get("reweight") else None
            if src is None or not src.is_file() or src in seen:
                continue
            seen.add(src)
            dest = out / f"trajectory-{safe_name(a.run + '-' + a.arm if multi else a.arm)}.png"
            shutil.copyfile(src, dest)
            blocks.append(Image(dest, f"DRO class weights over the DRO steps: {a.arm}" + (f" ({a.run})" if multi else "")))
    return blocks


def _pairs(run: RunSummary) -> list[tuple[ArmResult | None, ArmResult]]:
    """(arm without DRO on the same selection, reweighted arm) pairs of a run."""
    out = []
    for a in run.arms:
        if a.reweighted:
            before = next((b for b in run.arms if not b.reweighted and b.paths.get("selection")
                           and b.paths.get("selection") == a.paths.get("selection")), None)
            out.append((before, a))
    return out


def _rows(a: ArmResult | None, key: str = "fid") -> list[dict]:
    cw = (a.metrics or {}).get("classwise") if a is not None else None
    return (cw or {}).get(key) or []


def classwise_blocks(runs: list[RunSummary], out: Path, multi: bool) -> list:
    blocks: list = []
    any_rows = False
    # class-wise FID; runs evaluated without a feature-network metric have class-wise classifier FD only
    key = "fid" if any(_rows(a) for r in runs for a in r.arms) else "classifier_fd"
    name = "FID" if key == "fid" else "classifier FD"
    for run in runs:
        pairs = _pairs(run)
        series_sets = []
        if pairs:
            for before, after in pairs:
                series = ([(f"{before.arm} (uniform)", _rows(before, key))] if before else []) + [
                    (f"{after.arm} (DRO)", _rows(after, key))]
                full = next((a for a in run.arms if a.arm == after.baseline), None) or next(
                    (a for a in run.arms if a.method == FULL), None)
                if full is not None:
                    series.append((f"{full.arm} (all data)", _rows(full, key)))
                series_sets.append((after, series))
        else:
            series_sets.append((None, [(a.arm, _rows(a, key)) for a in run.arms]))
        for i, (after, series) in enumerate(series_sets):
            series = [(n, r) for n, r in series if r]
            if not series:
                continue
            any_rows = True
            tag = safe_name(f"{run.name}-{after.arm if after else 'all'}")
            title = f"Class-wise {name}: {after.arm if after else 'all arms'}" + (f" ({run.name})" if multi else "")
            fig = classwise_bars(series, out / f"classwise_{key}-{tag}.png", title, ylabel=f"class-wise {name}")
            if fig:
                blocks.append(Image(fig, title))
            blocks.append(_classwise_table(series))
    if not any_rows:
        blocks.append(Paragraph("No class-wise FID in these runs (needs labelled reference images; enable "
                                "`evaluate.classwise`)."))
        return blocks
    sources = {str(((a.metrics or {}).get("classwise") or {}).get("label_source")) for r in runs for a in r.arms
               if ((a.metrics or {}).get("classwise") or {}).get("label_source")}
    blocks.insert(0, Paragraph("Generated images get their class from: " + "; ".join(sorted(sources)) +
                               ". Per-class FID uses few images per class and is biased upward: compare only "
                               "values computed with the same counts."))
    return blocks


def _classwise_table(series: list[tuple[str, list[dict]]]) -> Table:
    classes = [r["class"] for r in series[0][1]]
    header = ["class"] + [n for n, _ in series]
    rows = []
    for i, c in enumerate(classes):
        row = [c]
        for _, r in series:
            v = r[i] if i < len(r) else {}
            row.append(f"{fmt(v.get('value'))} ({v.get('num_fake', 0)} gen.)")
        rows.append(row)
    if len(series) >= 2:
        base, new = series[0][1], series[1][1]
        both = [(b["value"], n["value"]) for b, n in zip(base, new)
                if b.get("value") is not None and n.get("value") is not None]
        better = sum(1 for b, n in both if n < b)
        rows.append([f"**{series[1][0]} better than {series[0][0]}**",
                     f"{better} of {len(both)} classes" + (f" with values (of {len(classes)})"
                                                           if len(both) < len(classes) else "")] +
                    [""] * (len(series) - 1))
    return Table(header, rows)


PROTOCOL_FIELDS = (
    ("feature network", lambda p: (p.get("feature_network") or {}).get("name")),
    ("weights hash", lambda p: (p.get("feature_network") or {}).get("weights_hash")),
    ("resize", lambda p: p.get("resize")),
    ("input", lambda p: p.get("input")),
    ("real images", lambda p: p.get("num_real")),
    ("generated images", lambda p: p.get("num_generated")),
    ("reference dataset", lambda p: (p.get("reference") or {}).get("dataset")),
    ("reference split", lambda p: (p.get("reference") or {}).get("split")),
    ("reference fingerprint", lambda p: (p.get("reference") or {}).get("fingerprint")),
    ("sampler", lambda p: (p.get("caller") or {}).get("sampler")),
    ("sampler steps", lambda p: (p.get("caller") or {}).get("sampler_steps", (p.get("caller") or {}).get("steps"))),
    ("sample seed", lambda p: (p.get("caller") or {}).get("sample_seed", (p.get("caller") or {}).get("seed"))),
    ("conditional", lambda p: p.get("conditional")),
    ("KID", lambda p: p.get("kid")),
    ("PRDC k", lambda p: p.get("prdc_k")),
    ("FID implementation", lambda p: p.get("fid_formula")),
    ("versions", lambda p: ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items())),
)


def protocol_blocks(arms: list[ArmResult], multi: bool) -> list:
    with_p = [a for a in arms if (a.metrics or {}).get("protocol")]
    if not with_p:
        return [Paragraph("No metrics.json with a protocol found.")]
    rows = []
    differing = False
    for label, get in PROTOCOL_FIELDS:
        vals = [get(a.metrics["protocol"]) for a in with_p]
        texts = [fmt(v) if not isinstance(v, dict) else ", ".join(f"{k}={v2}" for k, v2 in v.items()) for v in vals]
        if len(set(texts)) == 1:
            rows.append([label, texts[0]])
        else:
            differing = True
            rows.append([label, "; ".join(f"{a.arm}: {t}" for a, t in zip(with_p, texts))])
    acc = {fmt(a.metric("classifier_test_accuracy")) for a in with_p if a.metric("classifier_test_accuracy") is not None}
    if acc:
        rows.append(["classifier test accuracy", ", ".join(sorted(acc))])
    blocks: list = [Table(["", "value (all arms)" if not differing else "value"], rows, align_right_from=99)]
    if differing:
        blocks.append(Paragraph("**Some protocol fields differ between arms: their numbers are not directly "
                                "comparable.**"))
    return blocks
