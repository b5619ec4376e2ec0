"""``python -m ppl_vae`` runs the command line (as torchrun does)."""

import sys

from .cli import main

sys.exit(main())
