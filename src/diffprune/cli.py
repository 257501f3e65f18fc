"""The ``diffprune`` command line: one verb per stage, ``run`` for all of them, ``demo`` for a first look.

Every verb reads a run config (``--config``, default: the bundled demo config), applies ``--set a.b=value``
overrides, and runs its stage plus whatever stages it needs that are not cached yet.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from diffprune.cli_entry import debug_flag, invoke
from diffprune.pipeline.shipped import bundled_config, bundled_configs, resolve_config, run_name_for

app = typer.Typer(
    name="diffprune",
    help="Prune then reweight the training set of a diffusion model: embed, select, reweight, train, sample, evaluate. "
         "Global flags: --debug (keep tracebacks), --wait (queue behind another process computing the same stage).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="Run config: a YAML path or a shipped config's name (see `diffprune configs`; default: demo).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config value, e.g. --set train.steps=200 (repeatable).")]
NameOpt = Annotated[Optional[str], typer.Option("--name", "-n", help="Run name: outputs go to <runs_dir>/<name>/.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Recompute this stage even when its outputs are cached.")]
ArmOpt = Annotated[Optional[list[str]], typer.Option("--arm", "-a", help="Only this arm of the config (repeatable; default: all).")]
QuietOpt = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config of every stage and whether it would run, extend, resume or hit the cache; compute nothing.")]
EvalEveryOpt = Annotated[Optional[int], typer.Option("--eval-every", help="Evaluate the EMA model (FID, KID, ...) every N training steps and at the last; sets train.eval_every.")]
ClustersOpt = Annotated[Optional[int], typer.Option("--clusters", help="Group by N k-means clusters of the embeddings (unlabelled data); sets select.clusters.")]


def _pipeline(config: str | Path | None, overrides: list[str] | None, name: str | None, force: bool | tuple, quiet: bool,
              dry_run: bool = False, arms: list[str] | None = None, data: str | None = None):
    """The validated pipeline of a verb; its checks (devices, packages, sizes) pass before anything is written.

    ``data`` (a verb's ``--data``) without ``-c`` or ``--name`` names the run after the data, so that a verb
    on other data never writes into the default run's folder (``runs/demo``)."""
    from diffprune.pipeline import Pipeline, load_run_config
    from diffprune.provenance import print_provenance

    if data is not None and config is None and name is None:
        name = run_name_for(data)
    cfg = load_run_config(resolve_config(config), overrides or [], name=name)
    pipe = Pipeline(cfg, force=force, progress=not quiet, console=console, dry_run=dry_run)
    print_provenance(console, pipe.provenance)
    if arms is not None:
        pipe.check(_arms(pipe, arms))
    if not dry_run:
        pipe.write_run_files()  # config.yaml + arms.json first, so `export RUN` / `report RUN` find the run
    return pipe


def _dry(pipe, arms: list[str] | None, until: str = "evaluate") -> bool:
    """``--dry-run``: print the resolved config and status of every stage up to ``until`` (``Pipeline.plan``);
    True when that was the job."""
    if not pipe.dry_run:
        return False
    pipe.plan(arms, until=until)
    return True


def _flags(**values) -> list[str]:
    """Option values as ``--set`` overrides (options given on the command line win over the config)."""
    return [f"{key}={value}" for key, value in values.items() if value is not None]


def _arms(pipe, arms: list[str] | None):
    return [pipe.arm(a) for a in arms] if arms else list(pipe.cfg.arms)


@app.command()
def datasets() -> None:
    """List the dataset specs that ``data.spec`` accepts."""
    from diffprune.data import available_datasets

    table = Table("spec", "description", title="datasets")
    for spec, desc in available_datasets().items():  # "[hf]" in a description is text, not rich markup
        table.add_row(escape(spec), escape(desc))
    Console().print(table)


DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="Dataset spec (see `diffprune datasets`); sets data.spec. Without -c or --name the run is named after the data (runs/<data>/).")]


@app.command()
def embed(config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None,
          data: DataOpt = None,
          encoder: Annotated[Optional[str], typer.Option(help="Surrogate encoder; sets embed.encoder.")] = None,
          force: ForceOpt = False, no_progress: QuietOpt = False, dry_run: DryOpt = False) -> None:
    """Stage 1: embed every training image with the frozen surrogate encoder (features/<encoder>[-<options>]/)."""
    extra = _flags(**{"data.spec": data, "embed.encoder": encoder})
    pipe = _pipeline(config, [*extra, *(set_ or [])], name, ("embed",) if force else (), no_progress, dry_run,
                     arms=[], data=data)
    if _dry(pipe, None, "embed"):
        return
    feats, _ = pipe.embed()
    console.print(f"features {tuple(feats.shape)} in {pipe.features_dir()}")


@app.command()
def select(config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None, arm: ArmOpt = None,
           data: DataOpt = None,
           method: Annotated[Optional[str], typer.Option(help="Selection method; replaces the config's arms by this one.")] = None,
           ratio: Annotated[Optional[float], typer.Option(help="Keep ratio in (0, 1]; sets select.ratio.")] = None,
           keep: Annotated[Optional[str], typer.Option(help="top, bottom or middle; sets select.keep.")] = None,
           force: ForceOpt = False, no_progress: QuietOpt = False, dry_run: DryOpt = False) -> None:
    """Stage 2: score and select the coreset of each arm (selection/<method>-r<ratio>/)."""
    extra = _flags(**{"data.spec": data, "select.ratio": ratio, "select.keep": keep})
    if method:
        extra.append(f"arms=[{{method: {method}}}]")
    pipe = _pipeline(config, [*extra, *(set_ or [])], name, ("select",) if force else (), no_progress, dry_run,
                     arms=arm or [], data=data)
    if _dry(pipe, arm, "select"):
        return
    for a in _arms(pipe, arm):
        if a.method != "full":
            sel, _ = pipe.select(a)
            counts = ", ".join(f"{k}: {v}" for k, v in sel.counts.items())
            console.print(f"{a.label()}: kept {len(sel.indices)} of {len(sel.scores)} (per group: {counts}) "
                          f"in {pipe.root / 'selection' / pipe.selection_name(a)}")


@app.command()
def reweight(config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None, arm: ArmOpt = None,
             reference: Annotated[Optional[str], typer.Option(help="Reference DM: a diffusers folder, diffprune train dir or hub id.")] = None,
             train_reference: Annotated[bool, typer.Option("--train-reference", help="Train the reference with uniform weights first.")] = False,
             null_control: Annotated[Optional[bool], typer.Option("--null-control/--no-null-control", help="Also run the DRO against a second same-recipe reference (the null band); sets reweight.null_control.")] = None,
             estimator: Annotated[Optional[str], typer.Option(help="Excess-loss estimator: pixel, example or timestep; sets reweight.estimator.")] = None,
             clusters: ClustersOpt = None,
             force: ForceOpt = False, no_progress: QuietOpt = False, dry_run: DryOpt = False) -> None:
    """Stage 3: DRO class weights of each reweighted arm against the reference DM (reweight/<selection>/)."""
    if reference and train_reference:
        raise typer.BadParameter("--reference and --train-reference exclude each other")
    extra = _flags(**{"reweight.reference": reference, "reweight.null_control": null_control,
                      "reweight.estimator": estimator, "select.clusters": clusters})
    if train_reference:
        extra += ["reweight.reference=null"]  # no given reference: one is trained with uniform weights
    pipe = _pipeline(config, [*extra, *(set_ or [])], name, ("reweight",) if force else (), no_progress, dry_run,
                     arms=arm or [])
    if _dry(pipe, arm, "reweight"):
        return
    for a in _arms(pipe, arm):
        if a.reweight:
            weights, _ = pipe.reweight(a)
            console.print(f"{a.label()}: " + ", ".join(f"{k}={v:.3f}" for k, v in weights.items()))
            null = pipe.root / "reweight" / pipe.selection_name(a) / "null_control.json"
            if pipe.cfg.reweight.null_control and null.is_file():
                from diffprune.io import read_json

                band = read_json(null)
                console.print(f"  null band 1/K +- {band['band_halfwidth']:.4f}; outside it: "
                              f"{', '.join(band['distinguishable']) or 'none (indistinguishable from noise)'}")


@app.command()
def train(config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None, arm: ArmOpt = None,
          eval_every: EvalEveryOpt = None, force: ForceOpt = False, no_progress: QuietOpt = False,
          dry_run: DryOpt = False) -> None:
    """Stage 4: train each arm's DM on its (weighted) subset (train/<arm>/); resumes an interrupted run, and
    extends a finished one from its checkpoint when only steps/epochs/logging changed."""
    extra = _flags(**{"train.eval_every": eval_every})
    pipe = _pipeline(config, [*extra, *(set_ or [])], name, ("train",) if force else (), no_progress, dry_run,
                     arms=arm or [])
    if _dry(pipe, arm, "train"):
        return
    for a in _arms(pipe, arm):
        console.print(f"{a.label()}: model in {pipe.train(a)[0]}")


@app.command()
def sample(config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None, arm: ArmOpt = None,
           force: ForceOpt = False, no_progress: QuietOpt = False, dry_run: DryOpt = False) -> None:
    """Sample each arm's trained DM (samples/<arm>/samples.npz and grid.png)."""
    pipe = _pipeline(config, set_, name, ("sample",) if force else (), no_progress, dry_run, arms=arm or [])
    if _dry(pipe, arm, "sample"):
        return
    for a in _arms(pipe, arm):
        images, _ = pipe.sample(a)
        console.print(f"{a.label()}: {len(images)} samples in {pipe.root / 'samples' / a.label()}")


@app.command()
def evaluate(config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None, arm: ArmOpt = None,
             force: ForceOpt = False, no_progress: QuietOpt = False, dry_run: DryOpt = False) -> None:
    """Stage 5: FID and friends of each arm's samples against the training set (eval/<arm>/metrics.json)."""
    pipe = _pipeline(config, set_, name, ("evaluate",) if force else (), no_progress, dry_run, arms=arm or [])
    if _dry(pipe, arm, "evaluate"):
        return
    for a in _arms(pipe, arm):
        console.print(f"{a.label()}: FID {pipe.evaluate(a)[0].get('fid')}")


@app.command()
def fid(a: Annotated[str, typer.Argument(help="Reference side: image folder, .npz of images or of mu/sigma statistics, or dataset spec.")],
        b: Annotated[str, typer.Argument(help="Generated side, in the same forms.")],
        cache_dir: Annotated[Optional[Path], typer.Option(help="Feature/statistics cache (runs/<name>/eval reuses a run's).")] = Path(".diffprune-cache"),
        resolution: Annotated[Optional[int], typer.Option(help="Resize both sides' images to this side first.")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the results as JSON.")] = None,
        set_: SetOpt = None, config: ConfigOpt = None, no_progress: QuietOpt = False) -> None:
    """FID, KID and precision/recall/density/coverage between A and B (the FID Inception, as `evaluate`)."""
    from diffprune.evaluation.compare import compare
    from diffprune.io import atomic_write_json
    from diffprune.pipeline import load_run_config
    from diffprune.provenance import print_provenance, provenance

    cfg = load_run_config(resolve_config(config), set_ or [])
    print_provenance(console, provenance(None, cfg.sample.mixed_precision))
    result = compare(a, b, cfg.evaluate, cache_dir=cache_dir, resolution=resolution, progress=not no_progress,
                     skip_bad=cfg.data.skip_bad)
    table = Table("metric", "value", title=f"{a}  vs  {b}")
    for key, value in result.items():
        if key != "inputs":
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if out is not None:
        atomic_write_json(out, result)


@app.command()
def report(run_dirs: Annotated[list[Path], typer.Argument(help="Run directories, e.g. runs/demo.")],
           tolerance: Annotated[str, typer.Option(help="Comma-separated FID tolerances of the time-to-target table: target = full arm's final FID x (1 + tol).")] = "0.05,0.15") -> None:
    """Build report.md and report.html from finished run directories (reads only their files)."""
    from diffprune.report import build_report

    tolerances = _csv(tolerance, float, "--tolerance")
    if not tolerances or any(t < 0 for t in tolerances):
        raise typer.BadParameter(f"--tolerance: give tolerances >= 0, e.g. 0.05,0.15; got '{tolerance}'")
    for run_dir in run_dirs:
        if not (run_dir / "arms.json").exists():
            raise typer.BadParameter(f"'{run_dir}' has no arms.json: is it a run directory (runs/<name>)?")
        console.print(f"report: {build_report(run_dir, tolerances=tolerances)}")


@app.command()
def run(config_arg: Annotated[Optional[str], typer.Argument(metavar="CONFIG", help="Run config: a YAML path or a shipped config's name (e.g. cifar10-ddpm).")] = None,
        config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None, arm: ArmOpt = None,
        eval_every: EvalEveryOpt = None, clusters: ClustersOpt = None,
        force: Annotated[bool, typer.Option("--force", "-f", help="Recompute every stage, ignoring the cache.")] = False,
        no_progress: QuietOpt = False, dry_run: DryOpt = False) -> None:
    """All stages for every arm of CONFIG (or -c), then the report. Re-running skips finished stages; raising
    train.steps (or other resume-mutable fields) extends finished stages from their checkpoints."""
    if config_arg and config:
        raise typer.BadParameter("give the config once: as the argument or as -c/--config")
    extra = _flags(**{"train.eval_every": eval_every, "select.clusters": clusters})
    pipe = _pipeline(config_arg or config, [*extra, *(set_ or [])], name, force, no_progress, dry_run,
                     arms=arm or [])
    if _dry(pipe, arm):
        return
    pipe.command = sys.argv[1:]  # command.json: what made the run (run_all writes it)
    path = pipe.run_all(arm)
    console.print(f"\n[bold green]Report:[/] {path}")


@app.command()
def configs() -> None:
    """List the configs shipped with diffprune (usable by name: `diffprune run cifar10-ddpm`)."""
    for n in bundled_configs():
        Console().print(f"{n:<18} {bundled_config(n)}")


def _run_pipeline(run_dir: Path | None, config: str | None, set_: list[str] | None, name: str | None, quiet: bool):
    """The pipeline of a run directory (its resolved config.yaml) or of -c CONFIG."""
    if run_dir is not None:
        if config:
            raise typer.BadParameter("give a run directory or -c/--config, not both")
        if not (run_dir / "config.yaml").is_file():
            raise typer.BadParameter(f"'{run_dir}' has no config.yaml: is it a run directory (runs/<name>)?")
        config = str(run_dir / "config.yaml")
        # the run is where it lies now, whatever runs_dir (maybe relative) it was made with
        set_ = [f"runs_dir={run_dir.resolve().parent}", *(set_ or [])]
        name = name or run_dir.resolve().name
    return _pipeline(config, set_, name, (), quiet)


RunDirArg = Annotated[Optional[Path], typer.Argument(help="A run directory (runs/<name>); or use -c CONFIG.")]


@app.command()
def export(run_dir: RunDirArg = None, config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None,
           arm: ArmOpt = None,
           out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: <run>/export/<arm>).")] = None,
           no_progress: QuietOpt = False) -> None:
    """Write each pruned arm's coreset.csv / coreset.jsonl (files, labels, scores, sampling probability, loss
    weight) and, for a trained unconditional pixel UNet, a diffusers pipeline folder."""
    pipe = _run_pipeline(run_dir, config, set_, name, no_progress)
    chosen = [a for a in _arms(pipe, arm) if a.method != "full"]
    if out is not None and len(chosen) > 1:
        raise typer.BadParameter("--out needs exactly one --arm")
    for a in chosen:
        console.print(f"{a.label()}: {pipe.export(a, out)}")


@app.command()
def push(run_dir: RunDirArg = None, config: ConfigOpt = None, set_: SetOpt = None, name: NameOpt = None,
         arm: Annotated[str, typer.Option("--arm", "-a", help="The trained arm to push.")] = "",
         repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repository, e.g. user/ddpm-coreset.")] = "",
         public: Annotated[bool, typer.Option("--public", help="Create the repository public (default private).")] = False,
         no_progress: QuietOpt = False) -> None:
    """Upload an arm's diffusers pipeline folder to the Hugging Face hub (needs HF_TOKEN or a login)."""
    from diffprune.export.pipeline import check_push, push as push_folder

    if not arm or not repo_id:
        raise typer.BadParameter("push needs --arm ARM and --repo-id USER/NAME")
    check_push()  # no token, or offline: refuse before loading anything
    pipe = _run_pipeline(run_dir, config, set_, name, no_progress)
    folder = pipe.export(pipe.arm(arm)) / "pipeline"
    console.print(f"pushed {folder} to {push_folder(folder, repo_id, private=not public)}")


def _csv(value: str, kind: type, option: str) -> list:
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option}: expected a comma-separated list of {kind.__name__}, got '{value}'") from None


@app.command()
def sweep(config_arg: Annotated[Optional[str], typer.Argument(metavar="CONFIG", help="Base run config (YAML path or shipped name); its arms are replaced by the grid.")] = None,
          config: ConfigOpt = None,
          methods: Annotated[str, typer.Option(help="Comma-separated methods; '+dro' adds reweighting.")] = "random,gaussian,gaussian+dro",
          ratios: Annotated[str, typer.Option(help="Comma-separated keep ratios.")] = "0.1,0.3",
          seeds: Annotated[str, typer.Option(help="Comma-separated seeds (training, random selection, DRO).")] = "0",
          full: Annotated[bool, typer.Option("--full/--no-full", help="Also train on all data (the speed-up baseline).")] = True,
          devices: Annotated[int, typer.Option(min=1, help="Run arms concurrently, one process per device (GPU, or a share of the CPU cores).")] = 1,
          worker: Annotated[Optional[int], typer.Option(hidden=True)] = None,
          set_: SetOpt = None, name: NameOpt = None, force: ForceOpt = False, no_progress: QuietOpt = False) -> None:
    """Run a methods x ratios x seeds grid as one run: shared stages run once, finished cells are cached."""
    from diffprune.pipeline import Pipeline, load_run_config
    from diffprune.pipeline.sweep import collect_results, sweep_config, write_results
    from diffprune.pipeline.workers import run_workers, worker_order
    from diffprune.provenance import print_provenance

    if config_arg and config:
        raise typer.BadParameter("give the config once: as the argument or as -c/--config")
    base = load_run_config(resolve_config(config_arg or config), set_ or [], name=name)
    cfg = sweep_config(base, _csv(methods, str, "--methods"), _csv(ratios, float, "--ratios"),
                       _csv(seeds, int, "--seeds"), full=full)
    pipe = Pipeline(cfg, force=force, progress=not no_progress, console=console)
    print_provenance(console, pipe.provenance)
    pipe.command = sys.argv[1:]
    if worker is not None:  # one of --devices processes: its share of the arms first, no report
        pipe.run_all(worker_order([a.label() for a in cfg.arms], worker, devices), report=False)
        return
    if devices > 1:
        logs = run_workers(sys.argv[1:], devices, pipe.root / "workers")
        console.print(f"{devices} workers finished (logs: {logs[0].parent}); building the report")
    report_path = pipe.run_all()
    table = write_results(pipe.root, collect_results(pipe.root))
    Console().print(table.read_text())
    console.print(f"[bold green]Results:[/] {table} (and results.csv, results.json); report: {report_path}")


@app.command()
def demo(set_: SetOpt = None, name: NameOpt = None, force: ForceOpt = False, no_progress: QuietOpt = False) -> None:
    """The whole pipeline on the embedded digits dataset (a few minutes on a laptop CPU)."""
    import time

    t0 = time.perf_counter()
    pipe = _pipeline(bundled_config("demo"), set_, name, force, no_progress)
    pipe.command = sys.argv[1:]
    path = pipe.run_all()
    console.print(f"\n[bold green]Demo finished in {time.perf_counter() - t0:.0f} s. Report:[/] {path}")
    _print_results(pipe.root)


def _print_results(run_dir: Path) -> None:
    """A terminal-sized summary of the run's arms (the report has every column)."""
    from diffprune.pipeline.sweep import collect_results

    def fmt(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    table = Table("arm", "FID", "KID", "precision", "recall", "train (s)", "overheads (s)", title="results")
    for r in collect_results(run_dir):
        table.add_row(r["arm"], fmt(r["fid"], ".1f"), fmt(r["kid"], ".4f"), fmt(r["precision"], ".3f"),
                      fmt(r["recall"], ".3f"), fmt(r["train_seconds"], ".0f"), fmt(r["overhead_seconds"], ".0f"))
    Console().print(table)


def main() -> None:
    """Entry point: every failure becomes one red line ``error: ...`` and exit status 2 (1 for a bug).

    Global flags, accepted anywhere on the command line: ``--debug`` (or DIFFPRUNE_DEBUG=1) keeps the
    traceback; ``--wait`` (or DIFFPRUNE_WAIT=1) queues behind another process computing a stage of the same
    run directory instead of stopping (its result is then reused).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for flag, var in (("--debug", "DIFFPRUNE_DEBUG"), ("--wait", "DIFFPRUNE_WAIT")):
        if flag in sys.argv[1:]:
            sys.argv = [a for i, a in enumerate(sys.argv) if i == 0 or a != flag]
            os.environ[var] = "1"
    debug = debug_flag(console)
    if not any(a in ("--help", "-h") for a in sys.argv[1:]):
        from diffprune.runtime import configure_threads  # imports torch: not for --help

        configure_threads()
    from diffprune import interrupts

    previous = interrupts.stop_on_sigterm()  # SIGTERM stops like Ctrl-C: one line, exit 143
    try:
        invoke(app, sys.argv[1:], console)
    except SystemExit as e:  # typer turns KeyboardInterrupt into Exit(130): find the interrupt it came from
        interrupt = interrupts.interrupt_behind(e)
        if interrupt is None:
            raise
        interrupts.report(interrupt, console)
    except KeyboardInterrupt as e:
        interrupts.report(e, console)
    except Exception as e:
        if debug:
            raise
        from diffprune.errors import user_message

        msg = user_message(e)
        if msg is None:
            console.print(f"[bold red]error:[/] unexpected {type(e).__name__}: {' '.join(str(e).split())[:300]} "
                          f"(a bug? rerun with --debug for the traceback and report it)", highlight=False,
                          soft_wrap=True)
            sys.exit(1)
        console.print(f"[bold red]error:[/] {msg} (--debug for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:
        interrupts.restore_sigterm(previous)


if __name__ == "__main__":
    main()
