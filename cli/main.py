"""The ``tasador`` command (Typer, Rich): the local stack (``up``, ``down``, ``status``, ``demo``,
``data-api``, ``airflow``) and the operator's view of the model (``models``, ``rollback``,
``lineage``, ``predict``). Thin: each command calls the core and prints its answer as a table
(``--json`` for scripts). An error is one line naming the problem, plus the log's path."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tasador.settings import Settings

app = typer.Typer(help="Tasador local stack and tools", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)
log = logging.getLogger("tasador.cli")

Scale = Annotated[float | None, typer.Option(help="shrink every data API batch (0 < S <= 1)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


def settings_for(scale: float | None = None) -> Settings:
    if scale is not None and not 0 < scale <= 1:
        raise typer.BadParameter(f"--scale must be in (0, 1], got {scale}")
    settings = Settings.load()
    return settings.replace(data_api_scale=scale) if scale is not None else settings


def log_path(settings: Settings) -> Path:
    return settings.state_path / "logs" / "cli.log"


def setup_logging(settings: Settings, console_level: int = logging.WARNING) -> None:
    """Everything to the state dir's cli.log; ``console_level`` and above to stderr too."""
    path = log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path)
    to_file.setLevel(logging.INFO)
    to_console = logging.StreamHandler()
    to_console.setLevel(console_level)
    to_console.addFilter(lambda record: not record.exc_info)  # tracebacks go to the file; run() says one line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[to_file, to_console], force=True)


def run(settings: Settings, action: Callable[[], object]) -> object:
    """``action``'s answer; a failure the operator can act on is one line and the log's path."""
    import psycopg2
    import requests

    try:
        return action()
    except (ValueError, LookupError, OSError, requests.RequestException, psycopg2.Error) as exc:
        log.exception("tasador failed")
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True, soft_wrap=True)
        err.print(f"(log: {log_path(settings)})", highlight=False)
        raise typer.Exit(1) from None


def show_json(obj) -> None:
    out.out(json.dumps(obj, indent=2, default=str), highlight=False)


@app.command()
def up(scale: Scale = None) -> None:
    """Start the local stack (PostgreSQL, MLflow, Ray head with Serve, data API, Dash, Prometheus, Airflow)."""
    from cluster import stack

    settings = settings_for(scale)
    setup_logging(settings, logging.INFO)
    show_json(run(settings, lambda: stack.up(settings, scale)))


@app.command()
def down() -> None:
    """Stop exactly what 'up' started."""
    from cluster import stack

    settings = settings_for()
    setup_logging(settings, logging.INFO)
    show_json({"stopped": run(settings, lambda: stack.down(settings))})


@app.command()
def status(as_json: AsJson = False) -> None:
    """Each component of the local stack: its state, process and URL. Exit 1 unless all run."""
    from cluster import stack

    settings = settings_for()
    setup_logging(settings)
    report = run(settings, lambda: stack.status(settings))
    if as_json:
        show_json(report)
    else:
        table = Table("component", "state", "pid", "url", title="tasador status")
        for name, info in report.items():
            colour = "green" if info["state"] == "running" else "red"
            table.add_row(name, f"[{colour}]{info['state']}[/{colour}]", str(info.get("pid", "") or ""),
                          str(info.get("url", "") or ""))
        out.print(table)
    raise typer.Exit(0 if all(c["state"] == "running" for c in report.values()) else 1)


@app.command()
def demo(scale: Scale = None) -> None:
    """Up, then the pipeline over every batch the API serves, then a summary."""
    from cli import demo as the_demo

    settings = settings_for(scale)
    setup_logging(settings, logging.INFO)
    raise typer.Exit(run(settings, lambda: the_demo.run(settings, scale)))


@app.command("data-api")
def data_api(host: str | None = None, port: int | None = None, scale: Scale = None, seed: int | None = None,
             source: Annotated[str | None, typer.Option(help="a realtor CSV to serve instead of the generator")]
             = None) -> None:
    """Serve the re-created course data API."""
    from data_api.server import serve

    settings = settings_for(scale)
    setup_logging(settings, logging.INFO)
    run(settings, lambda: serve(host or settings.data_api_host, port or settings.data_api_port,
                                scale if scale is not None else settings.data_api_scale,
                                seed if seed is not None else settings.data_api_seed,
                                source if source is not None else settings.data_api_source))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def airflow(ctx: typer.Context) -> None:
    """The stack's Airflow CLI (e.g. 'tasador airflow dags pause tasador_retraining')."""
    from cluster import airflow as stack_airflow

    done = stack_airflow.airflow(settings_for(), *ctx.args, timeout_s=3600)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    raise typer.Exit(done.returncode)


@app.command()
def models(at: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z", "%Y-%m-%d %H:%M%z"],
        help="say which version served at this moment, e.g. 2026-12-01T12:00+0000")] = None,
        as_json: AsJson = False) -> None:
    """The production history: every promotion and rollback, with its reason (--at: what served then)."""
    from tasador import history

    settings = settings_for()
    setup_logging(settings)
    moves = run(settings, lambda: history.moves(settings))
    if at is not None:
        move = run(settings, lambda: history.serving_at(moves, at))
        answer = {"at": at, "version": move["version"] if move else None, "since": move and move["moved_at"],
                  "kind": move and move["kind"], "reason": move and move["reason"]}
        if as_json:
            show_json(answer)
        elif move is None:
            out.print(f"No {settings.model_name} version served at {at.isoformat()}: before the first promotion.")
        else:
            out.print(f"At {at.isoformat()}, v{move['version']} of {settings.model_name} served "
                      f"({move['kind']} at {move['moved_at']:%Y-%m-%d %H:%M:%S %Z}): {move['reason']}",
                      highlight=False)
        return
    if as_json:
        show_json(moves)
        return
    table = Table("since", "version", "from", "kind", "reason", title=f"{settings.model_name}: production history")
    for m in moves:
        colour = "yellow" if m["kind"] == "rollback" else "green"
        table.add_row(f"{m['moved_at']:%Y-%m-%d %H:%M:%S %Z}", f"v{m['version']}",
                      f"v{m['previous_version']}" if m["previous_version"] else "-",
                      f"[{colour}]{m['kind']}[/{colour}]", m["reason"])
    out.print(table if moves else f"{settings.model_name} has not been promoted yet.")


@app.command()
def rollback(version: Annotated[str, typer.Argument(help="an earlier production version, e.g. 3")],
             reason: Annotated[str, typer.Option(help="why, in words: recorded with the move")]) -> None:
    """Move the production alias back to an earlier production version, recorded like a promotion."""
    from tasador import history

    settings = settings_for()
    setup_logging(settings)
    done = run(settings, lambda: history.rollback(settings, version, reason))
    if done["status"] == "already_production":
        out.print(f"v{done['version']} is production already: nothing moved.")
    else:
        serving = done["serving"] or {}
        follows = (f"serving answered with v{serving['version']}" if serving.get("version") == done["version"] else
                   f"replicas follow within {settings.serve_registry_poll_s:g}s ({serving.get('status', 'not asked')})")
        out.print(f"Production is v{done['version']} (was v{done['previous_version']}); {follows}. "
                  f"Reason recorded: {done['reason']}", highlight=False)


@app.command()
def lineage(prediction_id: Annotated[str, typer.Argument(help="a prediction_id as /predict answered it")],
            as_json: AsJson = False) -> None:
    """What a prediction rests on: its version, that version's run, batches, rows and trigger."""
    from tasador import history

    settings = settings_for()
    setup_logging(settings)
    walk = run(settings, lambda: history.lineage(settings, prediction_id))
    if as_json:
        show_json(walk)
        return
    trained = walk["trained_on"]
    out.print(f"Prediction {walk['prediction_id']} at {walk['requested_at']:%Y-%m-%d %H:%M:%S %Z}: "
              f"${walk['predicted_price']:,.0f} by v{walk['model_version']} of {walk['model_name']}", highlight=False)
    out.print(f"MLflow run: {walk['run_url'] or '-'}", highlight=False)
    out.print(f"Trained on {trained['rows'] or 0:,} clean rows of batches {trained['batch_ids']} "
              f"(data hash {trained['data_hash']})", highlight=False)
    out.print(f"Why it was trained: {walk['trigger']['reason'] or '-'}", highlight=False)
    table = Table("batch_id", "batch", "clean rows", title="batches")
    for b in trained["batches"]:
        table.add_row(str(b["batch_id"]), str(b["batch_number"]), f"{b['clean_rows']:,}")
    out.print(table)
    if walk["sample_raw_rows"]:
        keys = list(walk["sample_raw_rows"][0])
        raw = Table(*keys, title="sample raw rows")
        for row in walk["sample_raw_rows"]:
            raw.add_row(*(str(row[k]) for k in keys))
        out.print(raw)


@app.command()
def predict(source: Annotated[str, typer.Argument(help="a JSON file (a listing, a list, or {\"listings\": [..]}),"
                                                    " or - for stdin")],
            as_json: AsJson = False) -> None:
    """Price listings with the production model through Ray Serve's /predict."""
    import requests

    settings = settings_for()
    setup_logging(settings)

    def ask() -> dict:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not JSON: {exc}") from None
        if isinstance(body, list):
            body = {"listings": body}
        answer = requests.post(f"{settings.serve}/predict", json=body, timeout=60)
        if answer.status_code != 200:
            raise ValueError(f"/predict answered {answer.status_code}: {answer.text[:500]}")
        return answer.json()

    answer = run(settings, ask)
    if as_json:
        show_json(answer)
        return
    table = Table("prediction_id", "price", title=f"priced by v{answer['model_version']} of {answer['model_name']}")
    for prediction_id, price in zip(answer["prediction_ids"], answer["prices"], strict=True):
        table.add_row(prediction_id, f"${price:,.0f}")
    out.print(table)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="tasador")


if __name__ == "__main__":
    main()
