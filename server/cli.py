"""The `liveshop` command: serve, demo, token."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from server.app import create_app
from server.auth import issue_token
from server.demo import announce_demo
from server.domain.identity import Role
from server.domain.orders import countries
from server.logs import configure_logging
from server.runner import UnusableListenAddress, check_listen_address, run
from server.settings import Settings, UnsafeConfiguration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveshop", description="Live-stream commerce backend")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the server"), ("demo", "run with a seeded demo store")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--host", help="address to listen on (LIVESHOP_HOST)")
        command.add_argument("--port", type=int, help="port to listen on (LIVESHOP_PORT)")
    token = commands.add_parser("token", help="print a signed access token")
    token.add_argument("--user", required=True, help="user id (the token's sub)")
    token.add_argument("--role", required=True, choices=[role.value for role in Role])
    token.add_argument("--name", help="display name")
    token.add_argument("--country", help="ISO 3166 country code")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # The flags win over the environment, and are checked as it is.
        flags = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
        settings = Settings(**flags)
        settings.check_safe()
    except ValidationError as exc:
        print(f"liveshop: configuration refused: {_refusals(exc)}", file=sys.stderr)
        return 2
    except UnsafeConfiguration as exc:
        print(f"liveshop: configuration refused: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _print_token(args, settings)
    if args.command == "demo" and settings.env == "prod":
        # It would seed a live room into the shop's own database and print tokens signed with
        # its key, for a day, where logs are collected.
        print("liveshop: the demo does not run with LIVESHOP_ENV=prod", file=sys.stderr)
        return 2
    try:
        check_listen_address(settings.host)
    except UnusableListenAddress as exc:
        print(f"liveshop: configuration refused: LIVESHOP_HOST (or --host): {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "demo":
        app = create_app(settings, on_ready=announce_demo)
    else:
        app = create_app(settings)
    try:
        run(app, settings)
    except SystemExit:  # uvicorn's 3 for a failed start-up
        # A URL the client could not use is a refused setting, as those checked above are.
        if getattr(app.state, "startup_refused", None) == "configuration":
            return 2
        raise
    return 0


def _refusals(exc: ValidationError) -> str:
    """One line naming each variable (and flag) refused, as the operator spells it."""
    faults = []
    for error in exc.errors():
        field = str(error["loc"][0])  # every check is a field's
        name = f"{Settings.model_config['env_prefix']}{field.upper()}"
        if field in ("host", "port"):
            name += f" (or --{field})"
        faults.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(faults)


def _print_token(args: argparse.Namespace, settings: Settings) -> int:
    if args.ttl <= 0:
        print("liveshop: --ttl must be positive", file=sys.stderr)
        return 2
    if args.country is not None and args.country.upper() not in countries():
        print("liveshop: --country must be an ISO 3166-1 alpha-2 code", file=sys.stderr)
        return 2
    try:
        token = issue_token(
            settings.signing_secret(),
            args.user,
            Role(args.role),
            name=args.name,
            country=args.country,
            ttl_seconds=args.ttl,
        )
    except ValueError as exc:  # one the server would refuse
        print(f"liveshop: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
