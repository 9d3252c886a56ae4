"""``python -m hwlat`` runs the ``hwlat`` command."""

import sys

from hwlat.cli import main

sys.exit(main())
