"""``python -m exfiqa.train {fr,vitfiqa} ...``: train an FR model or ViT-FIQA."""

import sys

from exfiqa.train.trainer import main

sys.exit(main())
