"""``python -m ppl_vae`` and the ``ppl-vae`` script: the command line (as torchrun runs it).

The command line is imported inside :func:`main`, so that a Ctrl-C while torch and Pyro load
ends with one line and status 130, like one during a run. The first stop signal (SIGINT,
SIGTERM, SIGHUP) stops the command; the ones after it, and any during the interpreter's exit,
are ignored (:mod:`ppl_vae.utils.signals`).
"""

import sys

from .utils import signals


def main() -> int:
    signals.install()
    try:
        from .cli import main as run

        code = run()
        signals.finish()
        return code
    except KeyboardInterrupt as e:  # while the command line loads
        signals.finish()
        line, code = signals.report(e)
        print(f"ppl-vae: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
