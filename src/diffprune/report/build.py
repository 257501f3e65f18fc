"""``build_report``: Markdown + self-contained HTML for one or several run directories, from their files only."""
from __future__ import annotations

import datetime as _dt
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffprune.evaluation import DEFAULT_TOLERANCES, fid_curve, plateau_change
from diffprune.io import atomic_write_text
from diffprune.report.collect import FULL, ArmResult, RunSummary, collect_run
from diffprune.report.document import (
    Bullets,
    Code,
    Document,
    Gallery,
    Heading,
    Image,
    Paragraph,
    Table,
    fmt,
    to_html,
    to_markdown,
)
from diffprune.report.errors import ReportError
from diffprune.report.plots import (class_weights_bars, classwise_bars, fid_vs_compute, fid_vs_training_compute,
                                    loss_curves)
from diffprune.report.quality import quality_blocks

METRIC_COLUMNS = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
                  ("density", "density"), ("coverage", "coverage"), ("classifier_fd", "classifier FD"))


def build_report(run_dir: Path | str | Sequence[Path | str], out_dir: Path | None = None,
                 tolerances: Sequence[float] = DEFAULT_TOLERANCES) -> Path:
    """Write ``report.md``, ``report.html`` and PNGs for one run directory or several, return the ``.md`` path.

    Args:
        run_dir: a run directory (holding ``arms.json``), or a list of them (e.g. seeds or ratios of a study).
        out_dir: where to write; default ``<run_dir>/report`` (several runs: ``report`` beside the first run,
            named after all of them).
        tolerances: time to target is measured to the full-data arm's final FID x (1 + each tolerance).
    """
    dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
    if not dirs:
        raise ReportError("build_report needs at least one run directory")
    runs = [collect_run(d, tolerances) for d in dirs]
    if out_dir is None:
        out_dir = dirs[0] / "report" if len(dirs) == 1 else dirs[0].parent / (
            "report-" + "+".join(r.name for r in runs))[:120]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = _document(runs, out)
    atomic_write_text(out / "report.html", to_html(doc))
    return atomic_write_text(out / "report.md", to_markdown(doc, out))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _document(runs: list[RunSummary], out: Path) -> Document:
    multi = len(runs) > 1
    arms = [a for r in runs for a in r.arms]
    title = "diffprune report: " + ", ".join(r.name for r in runs)
    doc = Document(title)
    doc.add(Paragraph(_intro(runs, arms)))
    ran = _provenance_lines(runs)
    if ran:
        doc.add(Paragraph("Ran on: " + "; ".join(f"`{line}`" for line in ran)))

    doc.add(Heading("Results"), _results_table(arms, multi))
    if multi or len({(a.method, a.ratio) for a in arms}) < len(arms) or len({a.ratio for a in arms}) > 1:
        doc.add(Heading("Method x ratio", 3), _paper_table(arms))

    fig = fid_vs_compute(arms, out / "fid_vs_compute.png", multi)
    doc.add(Heading("FID versus compute"))
    if fig:
        doc.add(Paragraph("Each point is an arm's final FID at its total cost; cost includes embedding, "
                          "selection, the reference stage and DRO for pruned arms (a given pre-trained reference "
                          "counts its load time here; its own training is in the reference table below). Lines "
                          "are FID logged during training (`train.eval_every`, `--eval-every N`), shifted right "
                          "by those overheads; evaluation time is not counted as cost."),
                Image(fig, "FID versus compute"))
    else:
        doc.add(Paragraph("Not available: needs FID values and stage manifests."))
    ttt = [a for a in arms if a.time_to_target]
    if ttt:
        fig = fid_vs_training_compute(ttt, out / "fid_vs_training_compute.png", multi,
                                      targets=[t["available"]["target_fid"] for t in ttt[0].time_to_target])
        doc.add(Heading("Time to target FID", 3), Paragraph(
            "Target = the full-data arm's final logged FID x (1 + tolerance). Each arm's training cost to the "
            "target is interpolated linearly between its evaluations; speed-up = the full-data arm's cost to "
            "the target / (the arm's cost to the target + its overheads). \"reference available\" leaves the "
            "reference model's training out (a given model's load time stays in); \"reference trained\" adds it "
            "(this run's reference stage, or the cost stated for a given model)."), _ttt_table(ttt, multi))
        converged = _convergence_note(arms, multi)
        if converged:
            doc.add(converged)
        if fig:
            doc.add(Image(fig, "FID during training against training compute"))
    elif any(a.train_log for a in arms):
        doc.add(Heading("Time to target FID", 3), Paragraph(
            "Not available: the arms logged no FID during training; set `train.eval_every` (`--eval-every N`)."))
    doc.add(*quality_blocks(runs, out))
    refs = [a for a in arms if a.reference and a.reference.get("kind")]
    if refs:
        doc.add(Heading("Speed-up and the reference model", 3), _reference_table(refs, multi))
    doc.add(Heading("Cost of every stage", 3), _cost_table(arms, multi))

    doc.add(Heading("Training loss"))
    fig = loss_curves(arms, out / "loss_curves.png", multi)
    doc.add(Image(fig, "Training loss per arm (loss-weighted arms include the class weights)") if fig
            else Paragraph("No training logs (train/<arm>/metrics.jsonl) found."))

    doc.add(Heading("Class weights"))
    fig = class_weights_bars(arms, out / "class_weights.png", multi)
    if fig:
        doc.add(Image(fig, "Class weights of the reweighted arms (dashed: uniform; shaded: the null control's "
                      "band, inside which a weight is indistinguishable from noise)"), _weights_table(arms, multi))
        doc.add(*_null_and_setting_notes(arms, multi))
        doc.add(*_rounds_tables(arms, multi))
        doc.add(*_trajectories(runs, out, multi))
    else:
        doc.add(Paragraph("No reweighted arm in these runs."))

    doc.add(Heading("Class-wise FID"))
    doc.add(*_classwise_blocks(runs, out, multi))

    doc.add(Heading("Selection"), *_selection_blocks(runs, out, multi))

    doc.add(Heading("Samples"))
    grids = [a for a in arms if a.grid is not None]
    gallery = []
    for run in runs:  # the real images beside the samples (written by the pipeline's report step)
        if (run.path / "real_grid.png").is_file():
            dest = out / f"real-{_safe(run.name)}.png"
            shutil.copyfile(run.path / "real_grid.png", dest)
            gallery.append(Image(dest, f"real training images{' (' + run.name + ')' if multi else ''}", width=260))
    for a in grids:
        dest = out / f"grid-{_safe(a.run + '-' + a.arm if multi else a.arm)}.png"
        shutil.copyfile(a.grid, dest)
        gallery.append(Image(dest, f"{a.run + '/' if multi else ''}{a.arm}", width=260))
    if gallery:
        doc.add(Gallery(gallery))
    else:
        doc.add(Paragraph("No sample grids found."))

    doc.add(Heading("Protocol"), *_protocol_blocks(arms, multi))
    doc.add(Heading("Command and configuration", 3), *_config_blocks(runs, out))
    notes = [n for r in runs for n in r.notes]
    no_is: dict[str, list[str]] = defaultdict(list)
    for a in arms:
        if a.speedup:
            notes += [f"{a.arm}: {n}" for n in a.speedup["notes"]]
        is_detail = ((a.metrics or {}).get("details") or {}).get("inception_score") or {}
        if is_detail.get("available") is False:
            no_is[str(is_detail.get("reason"))].append(a.arm)
    for reason, names in no_is.items():
        who = "all arms" if len(names) == len(arms) else ", ".join(names)
        notes.append(f"Inception Score not computed ({who}): {reason}")
    if notes:
        doc.add(Heading("Notes"), Bullets(list(dict.fromkeys(notes))))
    return doc


def _selection_blocks(runs: list[RunSummary], out: Path, multi: bool) -> list:
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
                    dest = out / f"{Path(png).stem}-{_safe((run.name + '-' if multi else '') + Path(sel).name)}.png"
                    shutil.copyfile(run.path / sel / png, dest)
                    blocks.append(Image(dest, f"{Path(sel).name}: {what}" + (f" ({run.name})" if multi else "")))
    return blocks or [Paragraph("No selection figures found (written by the select stage).")]


def _command(run: RunSummary) -> dict:
    """``command.json`` of a run (empty when it was not made by the CLI)."""
    import json

    cmd = run.path / "command.json"
    return json.loads(cmd.read_text()) if cmd.is_file() else {}


def _provenance_lines(runs: list[RunSummary]) -> list[str]:
    """Per run: where and how it ran (devices, processes, precisions, threads, launcher), from command.json."""
    from diffprune.provenance import provenance_line  # it loads torch: only for runs that recorded provenance

    return [f"{run.name + ': ' if len(runs) > 1 else ''}{provenance_line(rec)}" for run in runs
            if (rec := _command(run).get("provenance"))]


def _config_blocks(runs: list[RunSummary], out: Path) -> list:
    """The command line that made each run and its resolved ``config.yaml`` (copied beside the report and
    shown in the document itself)."""
    items, configs = [], []
    for run in runs:
        recorded = _command(run)
        command = recorded.get("command") or " ".join(recorded.get("argv", []))
        line = f"{run.name}: `{command}`" if command else f"{run.name}: command not recorded (not run by the CLI)"
        if (run.path / "config.yaml").is_file():
            dest = out / f"config-{_safe(run.name)}.yaml"
            shutil.copyfile(run.path / "config.yaml", dest)
            line += f"; resolved config: [{dest.name}]({dest.name})"
            configs.append(Code(dest.read_text(), f"{dest.name} (resolved config of {run.name})", "yaml"))
        items.append(line)
    return [Bullets(items), *configs]


def _trajectories(runs: list[RunSummary], out: Path, multi: bool) -> list:
    """The DRO weight trajectory of every reweighted arm (``reweight/<selection>/trajectory.png``)."""
    blocks, seen = [], set()
    for run in runs:
        for a in run.arms:
            src = run.path / a.paths["reweight"] / "trajectory.png" if a.paths.get("reweight") else None
            if src is None or not src.is_file() or src in seen:
                continue
            seen.add(src)
            dest = out / f"trajectory-{_safe(a.run + '-' + a.arm if multi else a.arm)}.png"
            shutil.copyfile(src, dest)
            blocks.append(Image(dest, f"DRO class weights over the DRO steps: {a.arm}" + (f" ({a.run})" if multi else "")))
    return blocks


def _intro(runs: list[RunSummary], arms: list[ArmResult]) -> str:
    protos = [(a.metrics or {}).get("protocol") or {} for a in arms]
    datasets = sorted({str((p.get("reference") or {}).get("dataset")) for p in protos if p.get("reference")})
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{len(arms)} arms from {len(runs)} run director{'ies' if len(runs) > 1 else 'y'} "
            f"({', '.join(f'`{r.path}`' for r in runs)}); reference data: {', '.join(datasets) or 'unknown'}. "
            f"Built {now} from the run files only. Speed-up = full-data training cost / (pruned training + "
            "embedding + selection + reference + DRO), by wall-clock and by images processed.")


def _speed(a: ArmResult, key: str) -> str:
    if a.speedup is None or a.speedup.get(key) is None:
        return "n/a"
    return f"{a.speedup[key]:.2f}x"


def _results_table(arms: list[ArmResult], multi: bool) -> Table:
    columns = list(METRIC_COLUMNS)
    if any(a.metric("fid_floor") is not None for a in arms):
        columns.insert(1, ("fid_floor", "FID floor (real, same N)"))
    header = (["run"] if multi else []) + ["arm", "method", "ratio", "DRO"] + [h for _, h in columns] + [
        "train images", "cost (s)", "speed-up (time)", "speed-up (images)"]
    rows = []
    for a in arms:
        row = ([a.run] if multi else []) + [a.arm, a.method, fmt(a.ratio, 2), "yes" if a.reweighted else "no"]
        row += [fmt(a.metric(k), 4 if k == "kid" else 3) for k, _ in columns]
        cost = a.cost["seconds"] if a.cost else None
        row += [fmt(a.train_images), fmt(cost, 1), _speed(a, "by_wall_clock"), _speed(a, "by_images")]
        rows.append(row)
    first_num = 4 if multi else 3
    return Table(header, rows, caption="Lower FID/KID/classifier FD is better; higher precision, recall, density "
                 "and coverage are better. Cost includes every overhead of the arm.", align_right_from=first_num)


def _mean_std(values: list[float], suffix: str = "") -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return (f"{vals[0]:.2f}" if suffix else fmt(float(vals[0]))) + suffix
    if suffix:
        return f"{np.mean(vals):.2f}{suffix} ± {np.std(vals, ddof=1):.2f} (n={len(vals)})"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f} (n={len(vals)})"


def _paper_table(arms: list[ArmResult]) -> Table:
    groups: dict[tuple[str, Any], list[ArmResult]] = defaultdict(list)
    for a in arms:
        groups[(a.method + ("+DRO" if a.reweighted else "") + a.variant, a.ratio)].append(a)
    rows = []
    for (method, ratio), members in sorted(groups.items(), key=lambda kv: (kv[0][0] != FULL, kv[0][0], -(kv[0][1] or 0))):
        sp = [m.speedup["by_wall_clock"] for m in members if m.speedup]
        spi = [m.speedup["by_images"] for m in members if m.speedup and m.speedup["by_images"] is not None]
        rows.append([method, fmt(ratio, 2), _mean_std([m.metric("fid") for m in members]),
                     _mean_std([m.metric("precision") for m in members]),
                     _mean_std([m.metric("recall") for m in members]),
                     _mean_std(sp, "x"), _mean_std(spi, "x")])
    return Table(["method", "ratio", "FID", "precision", "recall", "speed-up (time)", "speed-up (images)"], rows,
                 caption="Mean ± standard deviation over runs (seeds) with the same method and ratio.",
                 align_right_from=1)


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _ttt_table(arms: list[ArmResult], multi: bool) -> Table:
    rows = []
    for a in arms:
        for entry in a.time_to_target:
            avail, trained = entry["available"], entry["trained"]
            if avail["reached"]:
                hit = avail["pruned"]
                reached = "yes"
                at = [fmt(hit.get("step"), 1), fmt(hit.get("seconds"), 1), fmt(hit.get("images"), 0)]
            else:
                b = avail["best"]
                reached = f"no (best FID {fmt(b['fid'])} at step {fmt(b['step'])}, {fmt(b['seconds'], 1)} s)"
                at = ["n/a"] * 3
            rows.append(([a.run] if multi else []) + [
                a.arm, str(a.baseline), f"{100 * entry['tolerance']:g}%", fmt(avail["target_fid"]), reached, *at,
                _x(avail["speedup"]["seconds"]), _x(avail["speedup"]["images"]),
                _x(trained["speedup"]["seconds"]), _x(trained["speedup"]["images"])])
    header = (["run"] if multi else []) + [
        "arm", "against", "tolerance", "target FID", "reached", "at step", "at train s", "at train images",
        "speed-up (time, reference available)", "speed-up (images, reference available)",
        "speed-up (time, reference trained)", "speed-up (images, reference trained)"]
    return Table(header, rows, caption="Train seconds exclude evaluation; images are training images. A "
                 "speed-up is n/a where the full-data arm itself never reached the target or a cost is unknown. "
                 "\"against\": the full-data arm of the same seed that sets the target.",
                 align_right_from=3 if multi else 2)


def _convergence_note(arms: list[ArmResult], multi: bool) -> Paragraph | None:
    """How far each full-data arm's FID still moved over its last quarter: the target is only as meaningful
    as the baseline is converged."""
    parts = []
    for a in arms:
        if a.method != FULL:
            continue
        p = plateau_change(fid_curve(a.train_log))
        if p is None:
            continue
        name = f"{a.run}/{a.arm}" if multi else a.arm
        parts.append(f"{name}: FID {fmt(p['fid_from'])} -> {fmt(p['fid_to'])} over steps {p['from_step']:.0f}-"
                     f"{p['to_step']:.0f} ({100 * p['change']:+.1f}%)")
    if not parts:
        return None
    return Paragraph("Is the baseline converged? Change of the full-data FID over its last quarter of training: "
                     + "; ".join(parts) + ". A baseline that still improves by more than a few percent makes "
                     "the target a point on a still-falling curve: the speed-up is then one at that budget, not at "
                     "convergence.")


def _reference_table(arms: list[ArmResult], multi: bool) -> Table:
    rows = []
    for a in arms:
        r = a.reference
        training = r["reference_training"]
        rows.append(([a.run] if multi else []) + [
            a.arm, str(r["kind"]), fmt(training.get("images")), fmt(training.get("seconds"), 1),
            _x(r["available"]["by_wall_clock"]), _x(r["available"]["by_images"]),
            _x(r["trained"]["by_wall_clock"]), _x(r["trained"]["by_images"]), str(r.get("source") or "")])
    header = (["run"] if multi else []) + [
        "arm", "reference", "its training images", "its training s", "speed-up (time, available)",
        "speed-up (images, available)", "speed-up (time, trained)", "speed-up (images, trained)", "source"]
    return Table(header, rows, caption="Speed-ups at fixed epochs (final models). \"available\": the reference "
                 "model existed already (only loading it is counted); \"trained\": its training is counted too. "
                 "n/a: that cost is unknown (state it in reweight.reference_cost).", align_right_from=99)


def _cost_table(arms: list[ArmResult], multi: bool) -> Table:
    rows = []
    for a in arms:
        if not a.cost:
            continue
        for stage, s in a.cost["stages"].items():
            rows.append(([a.run] if multi else []) + [a.arm, stage, fmt(s["seconds"], 1), fmt(s["images_processed"]),
                                                      str(s.get("device") or "n/a")])
        rows.append(([a.run] if multi else []) + [a.arm, "**total**", fmt(a.cost["seconds"], 1),
                                                  fmt(a.cost["images_processed"]),
                                                  f"overhead {100 * a.cost['overhead_fraction']:.1f}%"])
    header = (["run"] if multi else []) + ["arm", "stage", "seconds", "images processed", "device"]
    return Table(header, rows, caption="From each stage's manifest.json. Shared stages (embedding, reference) "
                 "are charged in full to every arm that needs them.", align_right_from=3 if multi else 2)


def _weights_table(arms: list[ArmResult], multi: bool) -> Table:
    with_w = [a for a in arms if a.class_weights]
    names = list(with_w[0].class_weights)
    header = ["class"] + [f"{a.run}/{a.arm}" if multi else a.arm for a in with_w]
    rows = [[n] + [fmt(a.class_weights.get(n)) for a in with_w] for n in names]
    ent = []
    for a in with_w:
        w = np.asarray([v for v in a.class_weights.values() if v > 0], dtype=float)
        ent.append(fmt(float(-(w * np.log(w)).sum() / math.log(len(a.class_weights)))) if len(a.class_weights) > 1
                   else "n/a")
    rows.append(["**normalised entropy**"] + ent)
    return Table(header, rows, caption=f"Uniform weight is {1 / len(names):.3f}; entropy 1 = uniform, "
                 "near 0 = collapsed onto one class.")


def _null_and_setting_notes(arms: list[ArmResult], multi: bool) -> list[Paragraph]:
    """One line per reweighted arm: the null control's verdict, and how proxy and reference relate."""
    out = []
    for a in (a for a in arms if a.class_weights):
        name = f"{a.run}/{a.arm}" if multi else a.arm
        nc = a.null_control
        if nc:
            flagged = nc["indistinguishable"]
            verdict = ("every weight lies inside it: the weights are indistinguishable from noise"
                       if not nc["distinguishable"] else
                       f"outside it: {', '.join(nc['distinguishable'])}; inside (indistinguishable from noise): "
                       f"{', '.join(flagged) if flagged else 'none'}")
            out.append(Paragraph(
                f"**{name}, null control**: the same DRO against a second reference of the same recipe (true "
                f"excess zero) moved weights up to {fmt(nc['band_halfwidth'])} from uniform; the real weights moved "
                f"up to {fmt(nc['real_max_deviation'])} ({fmt(nc['signal_to_null'], 2)} x the band). {verdict}."))
        else:
            out.append(Paragraph(f"**{name}**: no null control (set `reweight.null_control: true`), so these "
                                 "weights are not compared with the estimator's noise floor."))
        setting = (a.dro_summary or {}).get("proxy_reference")
        if setting and setting.get("setting") != "doremi":
            out.append(Paragraph(f"**{name}, proxy and reference**: not DoReMi's setting (same preset and budget): "
                                 f"{'; '.join(setting.get('notes', []))}."))
    return out


def _rounds_tables(arms: list[ArmResult], multi: bool) -> list[Table]:
    """Iterated DoReMi (``reweight.rounds`` > 1): each round's weights and how far they moved from the weights
    its reference trained with (the stopping rule), one table per arm (``summary.json``'s ``rounds``)."""
    out = []
    for a in arms:
        record = (a.dro_summary or {}).get("rounds")
        if not record or not record.get("rounds"):
            continue
        rounds = record["rounds"]
        names = list(rounds[0]["weights"])
        rows = [[n] + [fmt(r["weights"].get(n)) for r in rounds] for n in names]
        rows.append(["**max change**"] + [fmt(r.get("max_change")) for r in rounds])
        verdict = (f"converged after round {record['rounds_run']}" if record.get("converged") else
                   f"not converged after {record['rounds_run']} of {record['max_rounds']} rounds")
        name = f"{a.run}/{a.arm}" if multi else a.arm
        out.append(Table(["class"] + [f"round {r['round']}" for r in rounds], rows,
                         caption=f"{name}: iterated DoReMi, each round's reference trained with the previous round's "
                         f"weights (round 1: uniform); max change = max |a_r - a_(r-1)|, stop below "
                         f"{record['tol']:g}: {verdict}. Per-round trajectories: reweight/<selection>/round-<r>/."))
    return out


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


def _classwise_blocks(runs: list[RunSummary], out: Path, multi: bool) -> list:
    blocks: list = []
    any_rows = False
    for run in runs:
        pairs = _pairs(run)
        series_sets = []
        if pairs:
            for before, after in pairs:
                series = ([(f"{before.arm} (uniform)", _rows(before))] if before else []) + [
                    (f"{after.arm} (DRO)", _rows(after))]
                full = next((a for a in run.arms if a.arm == after.baseline), None) or next(
                    (a for a in run.arms if a.method == FULL), None)
                if full is not None:
                    series.append((f"{full.arm} (all data)", _rows(full)))
                series_sets.append((after, series))
        else:
            series_sets.append((None, [(a.arm, _rows(a)) for a in run.arms]))
        for i, (after, series) in enumerate(series_sets):
            series = [(n, r) for n, r in series if r]
            if not series:
                continue
            any_rows = True
            tag = _safe(f"{run.name}-{after.arm if after else 'all'}")
            title = f"Class-wise FID: {after.arm if after else 'all arms'}" + (f" ({run.name})" if multi else "")
            fig = classwise_bars(series, out / f"classwise_fid-{tag}.png", title)
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


def _protocol_blocks(arms: list[ArmResult], multi: bool) -> list:
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
