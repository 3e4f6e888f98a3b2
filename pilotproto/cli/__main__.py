"""``python -m pilotproto.cli`` runs pilotctl (handy before the package is installed)."""

import sys

from .main import main

sys.exit(main())
