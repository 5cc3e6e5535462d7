"""The `videochat` console entry point.

Each subcommand lives with the package that implements it; this module only dispatches. A command's
module is imported when that command runs (so `videochat data ...` never imports torch-heavy training
code) and must define `register(subparsers)`, which adds its parser(s) with `set_defaults(func=...)`;
`func(args)` returns an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module that registers it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data_tools.cli", "build, validate, inspect, export and import interleaved video-text samples"),
    "features": ("videochat.features", "pre-compute frozen ViCLIP features for a sample set"),
    "train": ("train.cli", "run a training recipe (align, instruct, viclip) from a YAML config"),
    "export": ("train.export", "export a checkpoint as a self-contained model folder"),
    "eval": ("videochat.eval.cli", "evaluate a model (mvbench, qa, caption) or compare two results"),
    "chat": ("serve.cli", "chat about a video in the terminal"),
    "serve": ("serve.cli", "serve the Gradio chat app"),
    "demo": ("train.demo", "the end-to-end demo on a synthetic video world (CPU)"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videochat",
        description="videochat: build interleaved video-text datasets, train video chat models, chat about videos.",
    )
    parser.add_argument("--version", action="version", version="videochat " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        # The running command's module registers its real parser(s) first (one module may own several).
        importlib.import_module(COMMANDS[command][0]).register(sub)
    for name, (_module, help_text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text)  # listed in --help; imported only when it runs
    return parser


def _version() -> str:
    from videochat import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None or not hasattr(args, "func"):
        parser.print_help()
        return 0 if args.command is None else 2
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
