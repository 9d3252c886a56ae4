"""``python -m hwlat.cli`` runs the ``hwlat`` command (as the tests and benchmarks do)."""

import sys

from hwlat.cli import main

sys.exit(main())
