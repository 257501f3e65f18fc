"""``build_report``: Markdown + self-contained HTML for one or several run directories, from their files only."""
from __future__ import annotations

import datetime as _dt
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from diffprune.evaluation import DEFAULT_TOLERANCES
from diffprune.io import atomic_write_text
from diffprune.report.collect import ArmResult, RunSummary, collect_run
from diffprune.report.document import Bullets, Document, Gallery, Heading, Image, Paragraph, to_html, to_markdown
from diffprune.report.errors import ReportError
from diffprune.report.plots import class_weights_bars, fid_vs_compute, fid_vs_training_compute, loss_curves
from diffprune.report.quality import quality_blocks
from diffprune.report.sections import (classwise_blocks, config_blocks, protocol_blocks, provenance_lines, safe_name,
                                       selection_blocks, trajectories)
from diffprune.report.tables import (convergence_note, cost_table, null_and_setting_notes, paper_table,
                                     reference_table, results_table, rounds_tables, ttt_table, weights_table)


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


def _document(runs: list[RunSummary], out: Path) -> Document:
    multi = len(runs) > 1
    arms = [a for r in runs for a in r.arms]
    title = "diffprune report: " + ", ".join(r.name for r in runs)
    doc = Document(title)
    doc.add(Paragraph(_intro(runs, arms)))
    ran = provenance_lines(runs)
    if ran:
        doc.add(Paragraph("Ran on: " + "; ".join(f"`{line}`" for line in ran)))

    doc.add(Heading("Results"), results_table(arms, multi))
    if multi or len({(a.method, a.ratio) for a in arms}) < len(arms) or len({a.ratio for a in arms}) > 1:
        doc.add(Heading("Method x ratio", 3), paper_table(arms))

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
            "(this run's reference stage, or the cost stated for a given model)."), ttt_table(ttt, multi))
        converged = convergence_note(arms, multi)
        if converged:
            doc.add(converged)
        if fig:
            doc.add(Image(fig, "FID during training against training compute"))
    quality = quality_blocks(runs, out)
    if not ttt and any(a.train_log for a in arms):
        doc.add(Heading("Time to target FID", 3), Paragraph(
            "Not available: the arms logged no FID during training; set `train.eval_every` (`--eval-every N`)."
            + (" The time to target on the metric they logged follows." if quality else "")))
    doc.add(*quality)
    refs = [a for a in arms if a.reference and a.reference.get("kind")]
    if refs:
        doc.add(Heading("Speed-up and the reference model", 3), reference_table(refs, multi))
    doc.add(Heading("Cost of every stage", 3), cost_table(arms, multi))

    doc.add(Heading("Training loss"))
    fig = loss_curves(arms, out / "loss_curves.png", multi)
    doc.add(Image(fig, "Training loss per arm (loss-weighted arms include the class weights)") if fig
            else Paragraph("No training logs (train/<arm>/metrics.jsonl) found."))

    doc.add(Heading("Class weights"))
    fig = class_weights_bars(arms, out / "class_weights.png", multi)
    if fig:
        doc.add(Image(fig, "Class weights of the reweighted arms (dashed: uniform; shaded: the null control's "
                      "band, inside which a weight is indistinguishable from noise)"), weights_table(arms, multi))
        doc.add(*null_and_setting_notes(arms, multi))
        doc.add(*rounds_tables(arms, multi))
        doc.add(*trajectories(runs, out, multi))
    else:
        doc.add(Paragraph("No reweighted arm in these runs."))

    doc.add(Heading("Class-wise FID"))
    doc.add(*classwise_blocks(runs, out, multi))

    doc.add(Heading("Selection"), *selection_blocks(runs, out, multi))

    doc.add(Heading("Samples"))
    grids = [a for a in arms if a.grid is not None]
    gallery = []
    for run in runs:  # the real images beside the samples (written by the pipeline's report step)
        if (run.path / "real_grid.png").is_file():
            dest = out / f"real-{safe_name(run.name)}.png"
            shutil.copyfile(run.path / "real_grid.png", dest)
            gallery.append(Image(dest, f"real training images{' (' + run.name + ')' if multi else ''}", width=260))
    for a in grids:
        dest = out / f"grid-{safe_name(a.run + '-' + a.arm if multi else a.arm)}.png"
        shutil.copyfile(a.grid, dest)
        gallery.append(Image(dest, f"{a.run + '/' if multi else ''}{a.arm}", width=260))
    if gallery:
        doc.add(Gallery(gallery))
    else:
        doc.add(Paragraph("No sample grids found."))

    doc.add(Heading("Protocol"), *protocol_blocks(arms, multi))
    doc.add(Heading("Command and configuration", 3), *config_blocks(runs, out))
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


def _intro(runs: list[RunSummary], arms: list[ArmResult]) -> str:
    protos = [(a.metrics or {}).get("protocol") or {} for a in arms]
    datasets = sorted({str((p.get("reference") or {}).get("dataset")) for p in protos if p.get("reference")})
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{len(arms)} arms from {len(runs)} run director{'ies' if len(runs) > 1 else 'y'} "
            f"({', '.join(f'`{r.path}`' for r in runs)}); reference data: {', '.join(datasets) or 'unknown'}. "
            f"Built {now} from the run files only. Speed-up = full-data training cost / (pruned training + "
            "embedding + selection + reference + DRO), by wall-clock and by images processed.")
