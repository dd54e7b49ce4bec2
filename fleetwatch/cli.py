"""The ``fleetwatch`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fleetwatch import config as config_mod

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Markdown: the help texts' paragraphs are rewrapped to the terminal, and "[retention]" is shown as written
    # (in rich markup it is a style tag and vanishes).
    rich_markup_mode="markdown",
    help="fleetwatch: IoT readings and service logs into InfluxDB, Elasticsearch and Grafana.",
)
console = Console(stderr=True)

DEFAULT_CONFIG = Path("fleetwatch.toml")
EXAMPLE_CONFIG = Path("fleetwatch.example.toml")


def installed_example_config() -> Path:
    """The example config the wheel ships (in the dashboards package, beside the dashboards it names)."""
    from importlib.resources import files

    return Path(str(files("dashboards") / EXAMPLE_CONFIG.name))


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="TOML config file.")]


def _error(message: object) -> None:
    # Escaped: a message naming a config section ("[retention]") would otherwise lose it as a style tag.
    console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fleetwatch {version('fleetwatch')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the installed version and exit."),
    ] = False,
) -> None:
    pass


def _load(path: Path, to_run: bool = True) -> config_mod.Config:
    """The config, or exit 2 with every problem named. ``to_run``: it must also have an input."""
    try:
        cfg = config_mod.load(path)
        if to_run and (problems := config_mod.run_problems(cfg)):
            raise config_mod.ConfigError(str(path), problems)
    except config_mod.ConfigError as err:
        _error(err)
        raise typer.Exit(2) from None
    return cfg


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # The Elasticsearch client logs every request at INFO: a line per bulk request, dozens a second
        # when logs are shipped. Its warnings and errors still show; --verbose shows every request.
        logging.getLogger("elastic_transport").setLevel(logging.WARNING)


@app.command("check-config")
def check_config(
    file: Annotated[Path | None, typer.Argument(help="Config file.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file (as for run).")] = None,
) -> None:
    """Validate a config file without running anything."""
    if file is not None and config is not None and file != config:
        _error("give the config file once, as an argument or with --config")
        raise typer.Exit(2)
    file = file or config or DEFAULT_CONFIG
    cfg = _load(file)
    from flows.alerts.rules import load_rules

    es = f"Elasticsearch at {cfg.elasticsearch.shown_hosts}" if cfg.elasticsearch.enabled else "Elasticsearch off"
    console.print(
        "[green]ok[/green] "
        + escape(
            f"{file}: {len(cfg.mqtt.subscriptions)} subscription(s), "
            f"{len(cfg.logs.files)} log file input(s), {len(cfg.logs.syslog)} syslog input(s), "
            f"{len(load_rules(cfg.alerts))} alert rule(s); "
            f"InfluxDB {cfg.influxdb.api} at {cfg.influxdb.shown_url}, {es}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    from fleetwatch.retention import dashboard_windows_missing

    if (warning := dashboard_windows_missing(cfg)) is not None:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Worker threads in this process.")
    ] = None,
    process_id: Annotated[
        int | None, typer.Option("--process-id", "-i", min=0, help="This process's index in a cluster.")
    ] = None,
    addresses: Annotated[
        str | None, typer.Option("--addresses", "-a", help="Cluster: host:port of every process, comma-separated.")
    ] = None,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds.")] = None,
    status_file: Annotated[
        Path | None, typer.Option(help="Write progress counters here (JSON, 4 times a second).")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Log at DEBUG level, with every request to Elasticsearch.")] = False,
) -> None:
    """Run the pipeline: readings, logs and alerts to InfluxDB and Elasticsearch (Ctrl-C stops and flushes)."""
    _logging(verbose)
    cfg = _load(config)
    if (process_id is None) != (addresses is None):
        _error("--process-id and --addresses go together")
        raise typer.Exit(2)
    if addresses is not None and process_id is not None and (problem := _cluster_problem(addresses, process_id)):
        _error(problem)
        raise typer.Exit(2)
    total_workers = (workers or cfg.flow.workers) * (len(addresses.split(",")) if addresses else 1)
    if total_workers > 1 and cfg.mqtt.sparkplug_subscriptions():
        problem = config_mod.sparkplug_workers_problem(total_workers)
        _error(f"--workers/--addresses: {problem}")
        raise typer.Exit(2)
    from fleetwatch.runner import run_pipeline

    status = run_pipeline(
        cfg,
        workers=workers or cfg.flow.workers,
        process_id=process_id,
        addresses=addresses.split(",") if addresses else None,
        status_file=status_file,
        duration=duration,
    )
    if status:
        raise typer.Exit(status)


def _cluster_problem(addresses: str, process_id: int) -> str | None:
    listed = addresses.split(",")
    for address in listed:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"--addresses: expected host:port of every process, comma-separated (got {address!r})"
    if process_id >= len(listed):
        return f"--process-id: expected an index into the {len(listed)} --addresses, below {len(listed)}"
    return None


@app.command()
def simulate(
    config: ConfigOption = DEFAULT_CONFIG,
    duration: Annotated[float, typer.Option(min=0, help="Seconds to publish.")] = 60.0,
    devices: Annotated[int | None, typer.Option(min=1, help="Override simulator.devices.")] = None,
) -> None:
    """Publish simulated device readings (and some broken payloads) over MQTT."""
    _logging(False)
    cfg = _load(config, to_run=False)
    sim = cfg.simulator if devices is None else cfg.simulator.model_copy(update={"devices": devices})
    from fleetwatch.simulator import SimulatorError, run_simulator

    try:
        stats = run_simulator(sim, cfg.mqtt, duration)
    except SimulatorError as err:
        _error(err)
        raise typer.Exit(1) from None
    # One machine-readable line on stdout for scripts (the demo reads it).
    print(f"published={stats.published} bad={stats.bad}", flush=True)


@app.command()
def demo(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML config file. Default: fleetwatch.example.toml here, else the one installed with fleetwatch.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[float, typer.Option(min=0, help="Seconds to run.")] = 60.0,
) -> None:
    """Run the simulator and the pipeline with live progress, then summarise what landed where."""
    if config is None:
        config = EXAMPLE_CONFIG if EXAMPLE_CONFIG.exists() else installed_example_config()
    cfg = _load(config)
    from fleetwatch.demo import run_demo

    raise typer.Exit(run_demo(config, cfg, duration, console))


def render_dashboard_snapshots(
    cfg: config_mod.Config, out: Path, time_range: str, failures: list[str] | None = None
) -> list[Path]:
    """The dashboards' panels from the configured stores to PNG files, with a progress bar; a panel whose query
    failed is named in a warning (the store down, say), and drawn with its error."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from dashboards.queries import QueryError
    from dashboards.snapshot import render_snapshots

    es_auth = None
    if cfg.elasticsearch.username:
        password = cfg.elasticsearch.resolved_password()
        es_auth = (cfg.elasticsearch.username, password.get_secret_value() if password else "")
    token = cfg.influxdb.resolved_token()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    failures = [] if failures is None else failures
    paths: list[Path] = []
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("snapshots", total=None)
        try:
            paths = render_snapshots(
                out,
                cfg.influxdb.url,
                cfg.influxdb.database,
                cfg.elasticsearch.hosts[0],
                cfg.elasticsearch.index_prefix,
                time_range,
                progress=lambda done, total, what: bar.update(task, completed=done, total=total, description=what),
                es_auth=es_auth,
                influx_token=token.get_secret_value() if token and cfg.influxdb.api == "v2" else None,
                influx_auth=cfg.influxdb.v1_credentials(),
                failures=failures,
            )
        except QueryError as err:  # the dashboards' variables could not be read: no dashboard can be drawn
            failures.append(f"no dashboard drawn: {err}")
    for failure in failures[:10]:
        console.print(f"[yellow]warning:[/yellow] {escape(failure)}", highlight=False, soft_wrap=True)
    if len(failures) > 10:
        console.print(f"[yellow]warning:[/yellow] and {len(failures) - 10} more panels failed", highlight=False)
    return paths


@app.command()
def snapshot(
    config: ConfigOption = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option(help="Directory for the PNG files.")] = Path(".fleetwatch/snapshots"),
    last: Annotated[str, typer.Option(help="Time range: the last '1h', '30m', ... or '<start_ns>..<end_ns>'.")] = "1h",
) -> None:
    """Render every dashboard's panels from the real stores into PNG images (one per dashboard), with the
    dashboards' own queries: for places where Grafana is not running. Exits 1 if a panel's query failed."""
    from dashboards.queries import TimeRange

    try:
        TimeRange.parse(last).bounds_ns()
    except ValueError:
        _error(f"--last: expected a duration such as 1h or 30m, or <start_ns>..<end_ns> (got {last!r})")
        raise typer.Exit(2) from None
    cfg = _load(config, to_run=False)
    failures: list[str] = []
    for path in render_dashboard_snapshots(cfg, out, last, failures):
        console.print(str(path), highlight=False, markup=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


@app.command()
def retention(
    config: ConfigOption = DEFAULT_CONFIG,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Name what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete the daily Elasticsearch indices past their retention ([retention]) once, as `fleetwatch run`
    does every retention.check_interval: for cron, or to see what would go. Data streams and InfluxDB expire
    by themselves."""
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    from flows.sinks.elasticsearch import make_client
    from flows.sinks.es_retention import RetentionRefused, delete_expired, kind_retention

    cfg = _load(config, to_run=False)
    kept = kind_retention(cfg)
    if kept is None or not cfg.elasticsearch.enabled:
        console.print("nothing to do: [retention] or [elasticsearch] is off", highlight=False, markup=False)
        return
    es = make_client(cfg.elasticsearch)
    try:
        names = delete_expired(es, cfg.elasticsearch, kept, dry_run=dry_run)
    except (RetentionRefused, ApiError) as err:
        _error(err)
        raise typer.Exit(1) from None
    except TransportError as err:
        _error(f"Elasticsearch at {cfg.elasticsearch.shown_hosts} cannot be reached: {err.message}")
        raise typer.Exit(1) from None
    finally:
        es.close()
    verb = "would delete" if dry_run else "deleted"
    for name in names:
        print(f"{verb} {name}")
    console.print(f"{len(names)} index(es) {verb}", highlight=False)


grafana_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="markdown", help="Grafana: data sources, dashboards and alert rules."
)
app.add_typer(grafana_app, name="grafana")


@grafana_app.command("sync")
def grafana_sync(
    url: Annotated[str, typer.Option(help="Grafana's URL, such as http://localhost:3000.")],
    token: Annotated[
        str | None, typer.Option(envvar="FLEETWATCH_GRAFANA_TOKEN", help="Service-account token.", show_default=False)
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="Read the token from this file.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Create or update fleetwatch's data sources, folder, dashboards and alert rules in a running Grafana
    (idempotent: a second sync only updates)."""
    from dashboards.sync import SyncError, sync

    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            _error(f"--token-file: cannot read {str(token_file)!r}: {getattr(err, 'strerror', None) or err}")
            raise typer.Exit(2) from None
    if not token:
        _error("give --token, --token-file or FLEETWATCH_GRAFANA_TOKEN")
        raise typer.Exit(2)
    try:
        report = sync(url, token, config_path=config)
    except SyncError as err:
        _error(err)
        raise typer.Exit(1) from None
    for line in report.lines():
        console.print(line, highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":
    app()
