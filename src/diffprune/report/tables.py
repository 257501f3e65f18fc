"""The report's tables of numbers: results, method x ratio, time to target, the reference's cost, the cost of
every stage, class weights and the DRO notes (null control, proxy setting, rounds)."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from diffprune.evaluation import fid_curve, plateau_change
from diffprune.report.collect import FULL, ArmResult
from diffprune.report.document import Paragraph, Table, fmt

METRIC_COLUMNS = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
                  ("density", "density"), ("coverage", "coverage"), ("classifier_fd", "classifier FD"))



def _speed(a: ArmResult, key: str) -> str:
    if a.speedup is None or a.speedup.get(key) is None:
        return "n/a"
    return f"{a.speedup[key]:.2f}x"


def results_table(arms: list[ArmResult], multi: bool) -> Table:
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


def paper_table(arms: list[ArmResult]) -> Table:
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


def ttt_table(arms: list[ArmResult], multi: bool) -> Table:
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


def convergence_note(arms: list[ArmResult], multi: bool) -> Paragraph | None:
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


def reference_table(arms: list[ArmResult], multi: bool) -> Table:
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


def cost_table(arms: list[ArmResult], multi: bool) -> Table:
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


def weights_table(arms: list[ArmResult], multi: bool) -> Table:
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


def null_and_setting_notes(arms: list[ArmResult], multi: bool) -> list[Paragraph]:
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


def rounds_tables(arms: list[ArmResult], multi: bool) -> list[Table]:
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
