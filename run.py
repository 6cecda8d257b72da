"""Shim for a clone: ``python run.py experiment=<name>`` is ``rlg-bench experiment=<name>``."""
from rlg.harness.cli import main

if __name__ == "__main__":
    main()
