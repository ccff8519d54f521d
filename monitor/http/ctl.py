"""`monitor ctl`: the running daemon's status, pause and resume of a source, reload, over its HTTP API.

Exit codes: 0 done; 1 the daemon refused or could not be reached (the message says which); 2 a usage
error (bad arguments, an unreadable token file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from monitor.http.app import TOKEN_ENV

DEFAULT_URL = "http://127.0.0.1:9108"
DEFAULT_TIMEOUT_S = 30.0  # a reload warms a new bundle: seconds, not milliseconds


class _Usage(Exception):
    """A usage error: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor ctl", description="Talk to the running daemon's HTTP API.")
    parser.add_argument("--url", help=f"the daemon's HTTP server (default: from --config, else {DEFAULT_URL})")
    parser.add_argument("--config", type=Path,
                        help="the daemon's config file: the URL (metrics.host, metrics.port) and token file from it")
    parser.add_argument("--token-file", type=Path,
                        help=f"a file holding the API token (default: the {TOKEN_ENV} environment variable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for an answer")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="sources, models, thresholds, queue, cameras")
    status.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    for action in ("pause", "resume"):
        sub = commands.add_parser(action, help=f"{action} a source")
        sub.add_argument("name", help="the source's name in the config")
    commands.add_parser("reload", help="re-read the config and the model bundles")
    return parser


def _token(token_file: Path | None) -> str | None:
    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Usage(f"{token_file}: cannot read the token: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise _Usage(f"{token_file}: the token file is empty")
    return token


def _error_of(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0] if response.text.strip() else response.reason
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


def _print_status(status: dict[str, Any]) -> None:
    print(f"ready: {'yes' if status.get('ready') else 'no'}")
    queue = status.get("queue", {})
    print(f"queue: {queue.get('depth')} of {queue.get('capacity')}")
    thresholds = status.get("thresholds", {})
    print("sources:")
    for source in status.get("sources", []):
        threshold = thresholds.get(source["name"], {})
        value = threshold.get("value")
        shown = f"{value:.6g}" if isinstance(value, (int, float)) else "-"
        print(f"  {source['name']:<20} {source['kind']:<7} {source['state']:<9} model={source.get('model')} "
              f"threshold={shown} ({threshold.get('mode', '-')})")
    models = status.get("models", {})
    if models:
        print("models:")
        for name, model in models.items():
            print(f"  {name:<20} {model.get('bundle')} input={model.get('input')} score={model.get('score')}")
    cameras = status.get("cameras", [])
    if cameras:
        print("cameras:")
        for cam in cameras:
            since = cam.get("seconds_since_last_frame")
            print(f"  {cam['name']:<20} {'up' if cam.get('up') else 'down':<5} frames={cam.get('frames_read')} "
                  f"last_frame={'-' if since is None else f'{since:.1f}s ago'} camera={cam.get('camera')}")


def _from_config(args: argparse.Namespace) -> None:
    """Fill --url and --token-file left unset from the daemon's config file (`_Usage` when it is not valid)."""
    from monitor.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise _Usage(str(exc)) from None
    if args.url is None:
        host = config.metrics.host
        # A server on every address is reached on loopback from here; an IPv6 literal needs brackets.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        args.url = f"http://{f'[{host}]' if ':' in host else host}:{config.metrics.port}"
    token_file = getattr(config.metrics, "token_file", None)
    if args.token_file is None and token_file is not None:
        args.token_file = Path(token_file)


def run(args: argparse.Namespace) -> int:
    """Carry out one parsed command; the exit code."""
    if args.config is not None:
        _from_config(args)
    base = (args.url or DEFAULT_URL).rstrip("/")
    if args.command == "status":
        method, path, token = "GET", "/api/status", None
    elif args.command == "reload":
        method, path, token = "POST", "/-/reload", _token(args.token_file)
    else:
        # quote(safe=""): the name is one path segment, whatever it holds.
        method, path = "POST", f"/api/sources/{quote(args.name, safe='')}/{args.command}"
        token = _token(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.request(method, base + path, headers=headers, timeout=args.timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__ if isinstance(exc, requests.Timeout) else "connection failed"
        print(f"error: cannot reach the daemon at {base}: {reason}", file=sys.stderr)
        return 1
    if response.status_code >= 400:
        print(f"error: {args.command}: HTTP {response.status_code}: {_error_of(response)}", file=sys.stderr)
        return 1
    try:
        body = response.json()
    except ValueError:
        print(f"error: {args.command}: the answer is not JSON (is {base} the daemon?)", file=sys.stderr)
        return 1
    if args.command == "status":
        if args.json:
            print(json.dumps(body, indent=2))
        else:
            _print_status(body)
    elif args.command == "reload":
        print(f"reloaded: {body.get('message', '')}")
    else:
        print(f"{body.get('source', args.name)}: {body.get('state')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`monitor ctl ARGS`; returns the exit code (0, 1 or 2) rather than exiting."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (2) or the help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run(args)
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
