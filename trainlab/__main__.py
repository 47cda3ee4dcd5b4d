"""``python -m trainlab`` (also what ``torchrun -m trainlab run ...`` launches)."""

import os
import sys

from trainlab.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # A torchrun worker leaves without the interpreter's teardown. Its process group is gone already
    # (DistEnv.close), but gloo's C++ threads could still be joinable when the static destructors ran: under load,
    # 4 of 16 two-process launches aborted there ("terminate called without an active exception", SIGABRT) after
    # the run had ended and written everything, and torchrun reported the launch failed. Everything trainlab writes
    # is closed before main() returns; the standard streams are flushed here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
