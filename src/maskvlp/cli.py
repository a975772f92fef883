"""The `maskvlp` command: parse arguments, load and validate the config, call one function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from maskvlp.config import Config, ConfigError, load_config, to_yaml

EPILOG = """\
Every stage reads params.yaml (sections: seed, data, model, masking, train, eval, launcher) and
takes repeatable overrides, validated before any work starts:
  maskvlp shard --set data.source=emoji --set data.image_size=96
Run the whole pipeline with `dvc repro`; see README.md."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="parameters file (default: %(default)s)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. --set masking.ratio=0.75 (repeatable)",
    )


def cmd_shard(cfg: Config, args: argparse.Namespace) -> int:
    from maskvlp.data.shards import shard, summary

    manifest = shard(cfg, progress=not args.quiet)
    print(summary(manifest))
    print(f"wrote {cfg.data.out_dir}/manifest.json")
    return 0


def cmd_config(cfg: Config, args: argparse.Namespace) -> int:
    print(to_yaml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskvlp",
        description="Masked CLIP pre-training workflow: shard data, pre-train with FLIP or cluster masking, evaluate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "shard",
        help="write image-caption pairs into webdataset shards (DVC stage `shard`)",
        description="Read the source named by data.source (synthetic | emoji | folder | shards), skip and count "
        "unusable inputs, resize and re-encode images, split train/val by seed, and write "
        "data.out_dir/{train,val}-NNNNNN.tar plus manifest.json.",
    )
    _common(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser(
        "config",
        help="print the resolved, validated parameters",
        description="Load params.yaml with overrides, validate, and print the result as YAML.",
    )
    _common(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[Config, argparse.Namespace], int] = args.func
    try:
        cfg = load_config(args.params, args.overrides)
        return func(cfg, args)
    except ConfigError as exc:
        print(f"maskvlp {args.command}: invalid parameters: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"maskvlp {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
