"""``python -m inboundd.trial``: the same as ``inboundd trial``."""

import sys

from inboundd.trial.runner import main

sys.exit(main())
