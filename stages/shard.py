"""DVC entry point of the `shard` stage (see dvc.yaml): `python stages/shard.py [--params F] [--set k=v]`."""

import sys

from maskvlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", *sys.argv[1:]]))
