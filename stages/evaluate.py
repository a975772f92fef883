"""DVC entry point of the `evaluate` stage (see dvc.yaml): `python stages/evaluate.py [--set k=v]`."""

import sys

from maskvlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
