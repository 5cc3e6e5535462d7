"""`videochat train --config FILE [key=value ...]`: run a recipe (align | instruct | viclip).

Under torchrun (`torchrun --nproc_per_node N -m videochat.cli train ...`) the engine is DDP automatically;
DeepSpeed with `engine.kind=deepspeed engine.deepspeed_config=train/deepspeed/zero2.json`.
"""

from __future__ import annotations

import argparse
import sys

import yaml


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run a training recipe (align, instruct, viclip) from a YAML config",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="train YAML (see train/configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields, e.g. optim.lr=2e-5")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--check", action="store_true",
                   help="validate the config, build the model, print the trainable-parameter table, then exit")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from train.config import ConfigError, load_train_config, to_dict
    from videochat.data import TooManyBadSamples

    try:
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return 0
        from train.loop import Trainer, run
        from train.validate import preflight

        preflight(cfg)
        if args.check:
            trainer = Trainer(cfg)
            print(f"[train] check passed: {trainer.total_steps} steps of {cfg.batch_size} x {cfg.grad_accum} x "
                  f"{trainer.dist.world_size} samples; resume from {trainer.resumed_from}")
            trainer.engine.close()
            return 0
        run(cfg)
    except ConfigError as e:
        print(f"videochat train: config error: {e}", file=sys.stderr)
        return 2
    except TooManyBadSamples as e:  # the data is wrong, not the code: a message, not a traceback
        print(f"videochat train: stopped: {e}", file=sys.stderr)
        return 3
    return 0
