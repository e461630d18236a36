"""Which registry credentials a command uses: flags first, then the docker config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dfagent.registry.credentials import Credentials, from_docker_config

__all__ = ["PASSWORD_ENV", "add_arguments", "credentials_for"]

PASSWORD_ENV = "DFAGENT_REGISTRY_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("registry credentials (default: from the docker config)")
    auth.add_argument("--username", "-u", help="registry user name")
    auth.add_argument(
        "--password-stdin",
        action="store_true",
        help=f"read the password from standard input (or set {PASSWORD_ENV})",
    )
    auth.add_argument(
        "--docker-config",
        type=Path,
        help="docker config.json to take credentials from "
        "(default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    parser.add_argument(
        "--plain-http", action="store_true", help="the registry speaks http, not https"
    )


def credentials_for(args: argparse.Namespace, registry: str) -> Credentials | None:
    """Raises ValueError (a usage error) or CredentialsError (an unusable docker config)."""
    if args.username is not None:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = os.environ.get(PASSWORD_ENV, "")
        if not password:
            raise ValueError(f"--username needs a password: --password-stdin or {PASSWORD_ENV}")
        return Credentials(args.username, password)
    if args.password_stdin:
        raise ValueError("--password-stdin needs --username")
    if args.docker_config is not None and not args.docker_config.exists():
        raise ValueError(f"--docker-config {args.docker_config}: no such file")
    return from_docker_config(registry, args.docker_config)
