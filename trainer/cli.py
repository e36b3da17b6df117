"""What every command shares: ``--config``/``--set``/``--help-config``, printing the resolved
config, and turning a ``UserError`` into a one-line message instead of a traceback.

    parser = config_parser("fast-electra prepare", __doc__)
    args, rest = parser.parse_known_args(argv)
    cfg = resolve_config(args)            # validated, printed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from trainer.config.load import describe, load_config, to_toml
from trainer.config.run import RunConfig
from trainer.errors import UserError


def config_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="TOML run config, e.g. configs/tiny.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set train.lr=1e-3")
    parser.add_argument("--help-config", action="store_true",
                        help="print every config key with its value and meaning, then exit")
    return parser


def resolve_config(args: argparse.Namespace, echo: bool = True) -> RunConfig:
    cfg = load_config(args.config, args.overrides)
    if args.help_config:
        print(describe(cfg))
        sys.exit(0)
    if echo:
        print(f"# resolved config ({args.config}"
              + "".join(f" --set {o}" for o in args.overrides) + ")")
        print(to_toml(cfg), flush=True)
    return cfg


def main_guard(run: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a command; a UserError prints ``error: <message>`` and exits with status 2."""
    try:
        run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
