"""``python -m dsbuild`` is the ``dsbuild`` command."""

import sys

from dsbuild.cli import main

sys.exit(main())
