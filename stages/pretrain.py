"""DVC entry point of the `pretrain` stage (see dvc.yaml): `python stages/pretrain.py [--set k=v]`."""

import sys

from maskvlp.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", "--metrics", "metrics/train.json", *sys.argv[1:]]))
