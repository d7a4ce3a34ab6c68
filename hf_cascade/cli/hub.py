"""`hf-cascade export-hub` and `hf-cascade card`: publish the cascade on the Hugging Face Hub."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..config import CascadeConfig
from ..errors import CascadeError

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register `export-hub` and `card` on the subparsers object of the `hf-cascade` parser."""
    export = sub.add_parser(
        "export-hub",
        help="write a Hub-ready custom_generate repository that runs the cascade",
        description=(
            "Write OUT_DIR/custom_generate/generate.py with a copy of hf_cascade's generation modules beside it (so "
            "users need transformers alone), custom_generate/requirements.txt and a README.md model card (tags "
            "custom_generate, speculative-decoding). "
            "Then model.generate(..., custom_generate=OUT_DIR or the pushed repo id, trust_remote_code=True, "
            "assistant_models=[...], cascade_config=...) runs the cascade. Upload with `hf upload REPO_ID OUT_DIR`."
        ),
    )
    export.add_argument("out_dir", metavar="OUT_DIR", help="the repository folder to write (created if missing)")
    export.add_argument(
        "--cascade-config",
        metavar="DIR_OR_FILE",
        help="cascade_config.json (or a directory holding one) to ship in the repository and document",
    )
    export.add_argument("--target", metavar="NAME", help="Hub id of the target model used in the card's example")
    export.add_argument(
        "--assistant",
        action="append",
        default=[],
        metavar="NAME",
        help="Hub id of a recommended assistant model; repeat for several, largest first",
    )
    export.add_argument("--repo-id", metavar="ID", help="the Hub id the folder will be pushed to (for the examples)")
    export.add_argument(
        "--force",
        action="store_true",
        help="overwrite files that already exist in OUT_DIR (a symbolic link is replaced, never written through)",
    )
    export.set_defaults(func=run_export)

    card = sub.add_parser(
        "card",
        help='write the model-card section "Faster generation with hf_cascade" from a benchmark',
        description=(
            "Turn the results.json of `hf-cascade bench` into a Markdown model-card section: recommended assistant "
            "models and cascade_config.json (of the fastest cascade method with identical output), a usage snippet "
            "and the measured speedups. Results that record any output mismatch are refused."
        ),
    )
    card.add_argument("--target", required=True, metavar="NAME", help="Hub id of the model the card describes")
    card.add_argument("--results", required=True, metavar="FILE", help="results.json written by hf-cascade bench")
    card.add_argument(
        "--cascade-config",
        metavar="DIR_OR_FILE",
        help="recommend the benchmarked cascade method with this configuration instead of the fastest one",
    )
    card.add_argument("--out", metavar="FILE", help="write the Markdown here (default: standard output)")
    card.set_defaults(func=run_card)


def _load_config(path: str | None, parser: argparse.ArgumentParser) -> CascadeConfig | None:
    if path is None:
        return None
    if not os.path.exists(path):
        parser.error(f"--cascade-config: {path} does not exist (give cascade_config.json or a directory holding it)")
    try:
        return CascadeConfig.from_pretrained(path)
    except (OSError, CascadeError) as e:  # malformed JSON is a CascadeValueError naming the file
        parser.error(f"--cascade-config {path}: {e}")


def run_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..errors import CascadeError
    from ..hub import ExistingFilesError, export_hub

    config = _load_config(args.cascade_config, parser)
    try:
        written = export_hub(
            args.out_dir,
            cascade_config=config,
            target=args.target,
            assistants=args.assistant,
            repo_id=args.repo_id,
            overwrite=args.force,
        )
    except ExistingFilesError as e:  # the Python message says overwrite=True; a CLI user needs the flag
        parser.error(str(e.for_option("--force")))
    except (CascadeError, OSError) as e:
        parser.error(str(e))
    for path in written:
        print(path)
    print(
        f"Use it: model.generate(..., custom_generate={args.out_dir!r}, trust_remote_code=True, "
        "assistant_models=[...]); publish it: hf upload REPO_ID " + args.out_dir,
        file=sys.stderr,
    )
    return 0


def run_card(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..card import model_card_section
    from ..errors import CascadeError

    config = _load_config(args.cascade_config, parser)
    if not os.path.isfile(args.results):
        parser.error(f"--results: {args.results} is not a file (give the results.json of hf-cascade bench)")
    if args.out is not None:  # checked before the work, so a typo in --out fails at once
        folder = os.path.dirname(os.path.abspath(args.out))
        if os.path.isdir(args.out):
            parser.error(f"--out: {args.out} is a directory; give the Markdown file to write, e.g. {args.out}/card.md")
        if not os.path.isdir(folder):
            parser.error(f"--out: the folder {folder} of {args.out} does not exist; create it first")
    try:
        text = model_card_section(args.results, args.target, cascade_config=config)
    except CascadeError as e:  # the message names the file and the field; anything else is a bug: traceback
        parser.error(str(e))
    except OSError as e:
        parser.error(f"--results {args.results}: {e}")
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        parser.error(f"--out {args.out}: {e}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
