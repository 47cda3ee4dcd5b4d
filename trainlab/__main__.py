"""``python -m trainlab`` (also what ``torchrun -m trainlab run ...`` launches)."""

import sys

from trainlab.cli import main

sys.exit(main())
