"""``python -m exfiqa.extract --config C``: compute the per-sample arrays of a run config."""

from exfiqa.extract.stage import main

raise SystemExit(main())
