"""``python -m exfiqa.extract --config C``: compute the per-sample arrays of a run config."""

import sys

from exfiqa.extract.stage import main

sys.exit(main())
