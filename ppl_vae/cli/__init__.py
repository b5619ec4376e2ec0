"""The ``ppl-vae`` command: a thin shell over the library. Only ``ppl_vae.__main__`` imports
it. May import: every layer.

User errors (any :class:`~ppl_vae.utils.errors.PplVaeError`, bad arguments, and what the operating
system refuses: a read-only or full disk) print one line on stderr, without terminal escape
codes, and exit with status 2, never a traceback. SIGINT, SIGTERM and SIGHUP stop a run the
same way (exit 130, 143, 129): the last checkpoint stays, no partial output is left; the
signals after the first are ignored while it cleans up (:mod:`ppl_vae.utils.signals`).
"""

from __future__ import annotations

import argparse
import re
import sys

from ..utils.errors import PplVaeError
from ..utils.signals import report, stop_signals
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
    """Run ``ppl-vae`` with ``argv`` (default ``sys.argv[1:]``); return its exit status."""
    with stop_signals():
        try:
            return _main(argv)
        except KeyboardInterrupt as e:  # a stop signal (later ones are ignored), or Ctrl-C
            line, code = report(e)
            print(f"ppl-vae: {line}", file=sys.stderr)
            return code


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args) or 0
    except (PplVaeError, OSError) as e:
        print(f"ppl-vae: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The message on one line, without terminal escape codes (colours, cursor moves)."""
    return " ".join(_ESCAPES.sub("", str(error)).split())


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
