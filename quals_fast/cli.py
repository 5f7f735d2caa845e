"""`quals-fast` command line. Each sub-command lives in the module of the stage it drives and
registers itself through `register_cli(subparsers)`; this file only assembles them."""
import argparse
import importlib
import sys

# Modules that contribute a sub-command, in the order `--help` lists them.
COMMAND_MODULES = (
    "quals_fast.score_cli",
    "quals_fast.evaluation",
    "quals_fast.serve",
    "quals_fast.training.qagen",
    "quals_fast.training.qagen_eval",
    "quals_fast.training.swap_eval",
    "quals_fast.training.average",
    "quals_fast.training.embeddings",
    "quals_fast.training.qg",
    "quals_fast.training.qa",
    "quals_fast.training.qags_eval",
    "quals_fast.bench_cli",
    "quals_fast.training.conseq",
    "quals_fast.export",
)


def build_parser():
    parser = argparse.ArgumentParser(prog="quals-fast", description="Fast, exact QUALS factual-consistency scoring.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
