"""Built-in commands ``bench`` and ``leaderboard`` (:mod:`dfcompress.bench`), added through ``register_commands``.

Nothing heavy is imported here: torch, pandas and matplotlib are imported inside the commands."""
from __future__ import annotations

from pathlib import Path

import click

from dfcompress import hookimpl

from . import CONTEXT_SETTINGS


def _assignments(items: tuple[str, ...]) -> dict[str, str]:
    from dfcompress.options import parse_assignments

    return parse_assignments(items, flag="--set")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("suite_file", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="print the cells and their commands, validate every cell, run nothing")
@click.option("--only", "only", multiple=True, metavar="PATTERN",
              help="run only cells whose id matches (glob, or substring; repeatable); their dependencies come along")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE", help="set a [vars] value of the suite")
@click.option("--results", type=click.Path(file_okay=False),
              help="results directory of the suite [default: benchmarks/results/<suite>]")
def bench(suite_file, dry_run, only, assignments, results) -> None:
    """Run a benchmark suite: one `dfcompress run` subprocess per cell, then write benchmarks/results/<suite>.csv.

    Finished cells (metrics.json) are skipped and interrupted ones resumed, so re-running the same command
    finishes the suite."""
    from dfcompress.bench.launch import shell_line
    from dfcompress.bench.runner import Runner
    from dfcompress.bench.suite import load_suite
    from dfcompress.errors import ConfigError

    suite = load_suite(suite_file, overrides=_assignments(assignments))
    runner = Runner(suite, results_dir=results)
    cells = suite.select(only)
    plans = runner.plan(cells, validate=True)
    prereq_problems = runner.validate_prerequisites(cells)
    invalid = [p for p in plans if p.problems]
    if dry_run:
        click.echo(f"suite {suite.name}: {suite.description}".rstrip(": "))
        click.echo(f"results: {runner.rel(runner.results_dir)}  (repository root {suite.root})")
        needed = list(prereq_problems)
        if needed:
            click.echo("\nprerequisites:")
        for pid in needed:
            prereq = suite.prerequisites[pid]
            marker = runner.results_dir / "_prereq" / f"{pid}.done.json"
            state = "done" if marker.is_file() else "to run"
            click.echo(f"  [{state}] {pid}: dfcompress {shell_line(prereq.command)}")
            if prereq_problems[pid]:
                click.echo(f"    INVALID: {prereq_problems[pid]}")
        click.echo("\ncells:")
        for p in plans:
            extra = f"  iterations {p.iterations if p.iterations is not None else '?'} ({p.iterations_rule})" \
                if p.iterations_rule else ""
            dep = f"  reuses {p.cell.depends_on}/synthetic" if p.cell.depends_on else ""
            click.echo(f"  [{p.status}] {p.cell.id}{extra}{dep}")
            if p.reason:
                click.echo(f"    reason: {p.reason}")
            if p.argv:
                click.echo(f"    dfcompress -q {shell_line(p.argv)}")
            for problem in p.problems:
                click.echo(f"    INVALID: {problem}")
        counts = {s: sum(p.status == s for p in plans) for s in ("run", "resume", "done", "skip")}
        bad = len(invalid) + sum(1 for v in prereq_problems.values() if v)
        click.echo(f"\n{len(plans)} cells: {counts['run']} to run, {counts['resume']} to resume, {counts['done']} done, "
                   f"{counts['skip']} skipped; {len(invalid)} invalid cell(s), "
                   f"{sum(1 for v in prereq_problems.values() if v)} invalid prerequisite(s)")
        if bad:
            raise SystemExit(2)
        return
    if invalid or any(prereq_problems.values()):
        lines = [f"{p.cell.id}: {'; '.join(p.problems)}" for p in invalid]
        lines += [f"prerequisite {k}: {v}" for k, v in prereq_problems.items() if v]
        raise ConfigError("invalid cells (fix the suite, or leave them out with --only):\n  " + "\n  ".join(lines))
    try:
        results_map = runner.run(cells, on_change=runner.write_csv)
    finally:
        csv_path = runner.write_csv()
    counts = {s: sum(v == s for v in results_map.values()) for s in ("ok", "failed", "skipped", "blocked")}
    click.echo(f"{suite.name}: {counts['ok']} finished, {counts['failed']} failed, {counts['skipped']} skipped, "
               f"{counts['blocked']} blocked; results: {csv_path}")
    for cell_id, state in results_map.items():
        if state != "ok":
            click.echo(f"  {state}: {cell_id}")
    if counts["failed"]:
        raise SystemExit(1)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("suites", nargs=-1, metavar="[SUITE]...")
@click.option("--results", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True,
              help="where the suites' CSVs are")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="benchmarks", show_default=True,
              help="where LEADERBOARD.md, leaderboard.csv and plots/ go")
def leaderboard(suites, results, out_dir) -> None:
    """Render LEADERBOARD.md, leaderboard.csv and PNG plots from the suites' result CSVs (default: all)."""
    from dfcompress.bench.leaderboard import find_csvs, render

    written = render(find_csvs(Path(results), suites), Path(out_dir))
    for path in written.values():
        click.echo(str(path))


@hookimpl
def register_commands(cli):
    cli.add_command(bench)
    cli.add_command(leaderboard)
