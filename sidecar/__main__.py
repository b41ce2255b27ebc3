"""``python -m sidecar``: the same as the ``token-sidecar`` command."""

import sys

from sidecar.cli import main

sys.exit(main())
