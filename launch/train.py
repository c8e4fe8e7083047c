"""Entry for launchers that run a file: `deepspeed launch/train.py train ...`, `torchrun launch/train.py train ...`."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dslm.cli import main  # noqa: E402 - after the path fix, so a source checkout works uninstalled

main()
