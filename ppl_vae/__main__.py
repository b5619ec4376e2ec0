"""``python -m ppl_vae`` and the ``ppl-vae`` script: the command line (as torchrun runs it).

The command line is imported inside :func:`main`, so that a Ctrl-C while torch and Pyro load
ends with one line and status 130, like one during a run.
"""

import sys


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("ppl-vae: interrupted", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
