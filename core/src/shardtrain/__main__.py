"""``python -m shardtrain``: the same as the ``shardtrain`` console script."""

import sys

from shardtrain.cli import main

sys.exit(main())
