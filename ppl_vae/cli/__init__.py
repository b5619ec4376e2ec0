"""The ``ppl-vae`` command: a thin shell over the library.

User errors (any :class:`~ppl_vae.errors.PplVaeError`, and bad arguments) print one line on
stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PplVaeError
from . import compare, diagnose, train


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


COMMANDS = (train, compare, diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ppl-vae",
        description="Fit VAE-style Pyro model/guide pairs by SVI with the sampled-KL or the "
        "analytic-KL ELBO, compare the two, and check the posterior.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args) or 0
    except PplVaeError as e:
        print(f"ppl-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppl-vae: interrupted", file=sys.stderr)
        return 130
