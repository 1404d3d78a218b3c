"""`omega brain …` commands: ingest a catalog, record viewings, recommend, inspect.

`--db` belongs to the group (`omega brain --db PATH recommend`); other modules
add commands (e.g. `sync`) with `@app.command()` and open the brain with
`open_brain(ctx)`. Argument values are checked here and rejected with an
`OmegaError`, which the root turns into one line on stderr and exit code 2.
Heavy modules are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from omega.cli.progress import bars, notes
from omega.errors import OmegaError

if TYPE_CHECKING:
    from omega.brain.brain import Brain

app = typer.Typer(help="the TV brain: ingest a catalog, watch, recommend, stats", no_args_is_help=True)

DB_ENV = "OMEGA_BRAIN_DB"


def default_db_path() -> Path:
    """$OMEGA_BRAIN_DB, else ~/.local/share/omega/brain.db."""
    env = os.environ.get(DB_ENV)
    return Path(env) if env else Path.home() / ".local" / "share" / "omega" / "brain.db"


@app.callback()
def main(
    ctx: typer.Context,
    db: Annotated[
        Path | None, typer.Option("--db", help=f"brain database (default: ${DB_ENV} or ~/.local/share/omega/brain.db)")
    ] = None,
) -> None:
    """The TV brain: everything runs locally on this device."""
    ctx.obj = {"db": db}


def db_path(ctx: typer.Context) -> Path:
    """The brain file chosen by `--db` (or the default, whose folder is created)."""
    chosen = ctx.obj.get("db") if isinstance(ctx.obj, dict) else None  # set by the group callback
    if chosen is not None:
        return Path(chosen)
    path = default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_brain(ctx: typer.Context) -> Brain:
    from omega.brain.brain import Brain

    return Brain(db_path(ctx))


# ---------------------------------------------------------------- value parsers (one-line errors)


def _number(option: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OmegaError(f"{option} must be a number in [{lo:g}, {hi:g}], got {text!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise OmegaError(f"{option} must be a number in [{lo:g}, {hi:g}], got {text!r}")
    return value


def _integer(option: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        raise OmegaError(f"{option} must be an integer in {lo}..{hi}, got {text!r}") from None
    if not lo <= value <= hi:
        raise OmegaError(f"{option} must be an integer in {lo}..{hi}, got {text!r}")
    return value


def _fraction(text: str) -> float:
    return _number("--fraction", text, 0.0, 1.0)


def _rating(text: str) -> float:
    return _number("--rating", text, 0.5, 5.0)


def _k(text: str) -> int:
    return _integer("--k", text, 1, 100)


def _hour(text: str) -> int:
    return _integer("--hour", text, 0, 23)


def _weekday(text: str) -> int:
    return _integer("--weekday", text, 0, 6)


def _content_id(text: str) -> int:
    return _integer("CONTENT_ID", text, 0, 2**63 - 1)


# ---------------------------------------------------------------- commands


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Option("--catalog", help="MovieLens folder (ml-latest, ml-100k or ml-1m layout)")],
) -> None:
    """Load a catalog, embed every item on this device and build its vector index."""
    from omega.datasets.movielens import load_movielens

    data = load_movielens(catalog)
    with open_brain(ctx) as brain:
        brain.embedder  # load the model before the bar starts  # noqa: B018
        with bars() as stage:
            count = brain.ingest_catalog(data.items, progress=lambda done, total: stage("embedding catalog", done, total))
        stats = brain.stats()
    notes("brain")(f"ingested {count} items from {catalog} ({data.layout}); catalog holds {stats['catalog']} items")
    print(json.dumps({"ingested": count, "catalog": stats["catalog"], "layout": data.layout}))


@app.command("watch")
def watch(
    ctx: typer.Context,
    content_id: Annotated[int, typer.Argument(metavar="CONTENT_ID", help="catalog content id", parser=_content_id)],
    fraction: Annotated[float, typer.Option("--fraction", help="fraction watched, 0..1", parser=_fraction)],
    rating: Annotated[float | None, typer.Option("--rating", help="stars, 0.5..5", parser=_rating)] = None,
    liked: Annotated[bool | None, typer.Option("--liked/--disliked", help="explicit thumbs up / down")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the stored episode as JSON")] = False,
) -> None:
    """Record a viewing episode (and learn from it)."""
    from omega.brain.learning import engagement_from_feedback

    engagement = engagement_from_feedback(liked=liked, rating=rating) if (liked is not None or rating is not None) else 0.0
    with open_brain(ctx) as brain:
        episode = brain.on_user_action(int(content_id), watch_fraction=fraction, engagement=engagement)
        title = brain.catalog.item(episode.content_id).title
    record = {
        "id": episode.id, "content_id": episode.content_id, "title": title, "completion": episode.completion,
        "reward": round(episode.reward, 4), "outcome": episode.outcome, "started_at": episode.started_at,
        "context": {"hour": episode.context.hour, "weekday": episode.context.weekday, "profile": episode.context.profile},
    }  # fmt: skip
    if as_json:
        print(json.dumps(record))
    else:
        print(f"recorded episode {episode.id}: {title} ({episode.outcome}, reward {episode.reward:+.2f})")


@app.command("recommend")
def recommend(
    ctx: typer.Context,
    k: Annotated[int, typer.Option("--k", help="how many items, 1..100", parser=_k)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    hour: Annotated[int | None, typer.Option("--hour", help="hour of day 0..23 (default: now)", parser=_hour)] = None,
    weekday: Annotated[
        int | None, typer.Option("--weekday", help="0 = Monday .. 6 = Sunday (default: today)", parser=_weekday)
    ] = None,
    profile: Annotated[str, typer.Option("--profile", help="viewer profile name")] = "default",
) -> None:
    """Recommend with reasons, entirely on this device."""
    from omega.brain.brain import context_at
    from omega.brain.records import ViewingContext

    now = context_at(profile=profile)
    context = ViewingContext(
        hour=now.hour if hour is None else int(hour), weekday=now.weekday if weekday is None else int(weekday), profile=profile
    )
    with open_brain(ctx) as brain:
        recs = brain.recommend(context, k=int(k))
    if as_json:
        print(json.dumps({
            "context": {"hour": context.hour, "weekday": context.weekday, "profile": context.profile},
            "recommendations": [
                {"content_id": r.content_id, "title": r.title, "score": round(r.score, 4), "reasons": list(r.reasons)}
                for r in recs
            ],
        }))  # fmt: skip
        return
    for rank, r in enumerate(recs, start=1):
        print(f"{rank:>3}. {r.title} [{r.content_id}]  {r.score:.3f}  — {'; '.join(r.reasons)}")


@app.command("stats")
def stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """What the brain holds: catalog, episodes, patterns, consolidated patterns, transitions."""
    path = db_path(ctx)
    with open_brain(ctx) as brain:
        report = {"db": str(path), **brain.stats()}
    if as_json:
        print(json.dumps(report))
        return
    width = max(len(key) for key in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------- sync


def _positive_seconds(text: str) -> float:
    return _number("--interval", text, 0.01, 86_400.0)


@app.command("sync")
def sync(
    ctx: typer.Context,
    server: Annotated[str, typer.Option("--server", help="constellation URL, e.g. http://127.0.0.1:8700")],
    device_id: Annotated[str | None, typer.Option("--device-id", help="this TV's device id (UUID); stored for later syncs")] = None,
    token: Annotated[str | None, typer.Option("--token", help="device token from `omega device token`; stored too")] = None,
    tier: Annotated[str | None, typer.Option("--tier", help="premium | active | casual (default: stored, else active)")] = None,
    daemon: Annotated[bool, typer.Option("--daemon", help="keep syncing on the tier's schedule until SIGINT/SIGTERM")] = False,
    interval: Annotated[
        float | None, typer.Option("--interval", help="seconds between daemon syncs (default: the tier's)", parser=_positive_seconds)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    ca_file: Annotated[
        str | None, typer.Option("--ca-file", help="PEM file of the CA(s) to trust for https:// (default: the system's)")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="allow plain http:// / ws:// to a server that is not on loopback")
    ] = False,
) -> None:
    """Push this TV's high-quality patterns, pull consolidated deltas, heartbeat; once or as a daemon."""
    import asyncio
    import signal
    import sys

    from omega.brain.sync import SyncAgent, SyncFailed, parse_tier, policy_for, tier_name
    from omega.brain.sync import state as sync_state
    from omega.brain.sync.transport import check_server_url, client_tls

    check_server_url(server, insecure=insecure)  # a bad or plain-text URL fails before anything is stored
    if ca_file is not None:
        client_tls(ca_file)  # so does an unreadable CA file
    if (device_id is None) != (token is None):
        raise OmegaError("--device-id and --token go together")
    chosen_tier = parse_tier(tier) if tier is not None else None
    new_identity = None
    if device_id is not None and token is not None:
        new_identity = (sync_state.parse_device_id(device_id), token.strip())
        sync_state.check_token(new_identity[1])

    with open_brain(ctx) as brain:
        store = brain.store
        if new_identity is not None:
            sync_state.save_identity(store, *new_identity)
        if chosen_tier is not None:
            store.set_state(sync_state.TIER_KEY, tier_name(chosen_tier))
        identity = sync_state.load_identity(store)
        if identity is None:
            raise OmegaError("this TV has no device identity yet: pass --device-id and --token once")
        final_tier = chosen_tier or parse_tier(store.get_state(sync_state.TIER_KEY) or "active")
        policy = policy_for(final_tier)
        if interval is not None:
            policy = policy.with_interval(interval)
        agent = SyncAgent(
            brain, server_url=server, device_id=identity[0], token=identity[1], tier=final_tier, policy=policy,
            ca_file=ca_file, insecure=insecure,
        )  # fmt: skip

        if not daemon:
            async def once():
                try:
                    return await agent.sync_once()
                finally:
                    await agent.close()

            try:
                report = asyncio.run(once())
            except SyncFailed as exc:
                if exc.auth:
                    raise OmegaError(f"server refused this TV's credentials: {exc}") from None
                if exc.code == "tls":
                    raise OmegaError(str(exc)) from None
                print(f"omega: sync failed: {exc} (outbox kept: {agent.outbox.pending_count()} batch(es))", file=sys.stderr)
                raise typer.Exit(1) from None
            summary = {"server": server, "tier": tier_name(final_tier), **report.to_dict()}
            if as_json:
                print(json.dumps(summary))
            else:
                print(
                    f"pushed {report.pushed_patterns} patterns + {report.pushed_edges} edges ({report.push_bytes} B), "
                    f"pulled {report.pulled_patterns} patterns + {report.pulled_edges} edges ({report.pull_bytes} B, "
                    f"cursor {report.cursor}), heartbeat {report.heartbeat_bytes} B, {report.duration_s * 1000:.0f} ms"
                    + (f"; {len(report.errors)} warning(s): {'; '.join(report.errors)}" if report.errors else "")
                )
            return

        def log_sync(report, error, next_delay: float) -> None:
            if error is not None:
                print(f"omega sync: failed: {error}; next try in {next_delay:.1f} s", file=sys.stderr, flush=True)
                return
            line = {"event": "sync", **report.to_dict(), "next_sync_in_s": round(next_delay, 3)}
            print(json.dumps(line) if as_json else (
                f"omega sync: pushed {report.pushed_patterns}/{report.pushed_edges} ({report.push_bytes} B), "
                f"pulled {report.pulled_patterns}/{report.pulled_edges} ({report.pull_bytes} B), "
                f"cursor {report.cursor}; next in {next_delay:.1f} s"
            ), file=sys.stderr, flush=True)  # fmt: skip

        async def forever() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print(f"omega sync: daemon started ({tier_name(final_tier)}, every {policy.interval_s:g} s)", file=sys.stderr, flush=True)
            await agent.run(stop, on_sync=log_sync)
            print("omega sync: stopped", file=sys.stderr, flush=True)

        asyncio.run(forever())


def register(root: typer.Typer) -> None:
    """Attach `omega brain …` to the root app."""
    root.add_typer(app, name="brain")
