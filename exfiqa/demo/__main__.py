"""``python -m exfiqa.demo [--config C] [--force] [--tiny]``: build the demo world."""

from .world import main

raise SystemExit(main())
