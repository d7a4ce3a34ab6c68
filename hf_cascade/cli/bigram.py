"""`hf-cascade bigram`: build Max-Gram's bigram fallback table from a model's own next-token choices."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..errors import CascadeError
from ._args import add_loading_args, add_model_source_args, positive_int
from ._models import check_sources, load_models, log, model_or_default

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Register `bigram` on the subparsers object of the `hf-cascade` parser."""
    bigram = sub.add_parser(
        "bigram",
        help="build Max-Gram's bigram fallback table from a model's own next-token choices",
        description=(
            "Run the model once on every token of its vocabulary (after the BOS token) and save its greedy next "
            "token as a safetensors table (hf_cascade.BigramTable.from_model). When nothing in the prompt or the "
            "answer matches the current suffix, Max-Gram proposes from this table; the adaptive draft length drafts "
            "from it only while its observed acceptance pays for the verification. Pass the file to "
            "`hf-cascade generate --bigram-table`, or name it in a cascade_config.json (max_gram.bigram_table). "
            "Costs vocab_size**2 * hidden_size multiply-adds in the output layer: about 4 minutes for SmolLM2-135M "
            "on 2 CPU cores. The table only changes the drafts, never the output."
        ),
    )
    add_model_source_args(bigram, "--model", "the model whose next-token choices fill the table", embedded_default=True)
    bigram.add_argument("--out", required=True, metavar="FILE", help="the safetensors file to write")
    bigram.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    bigram.add_argument(
        "--batch-size", type=positive_int, default=256, metavar="N", help="tokens per forward pass (default: 256)"
    )
    add_loading_args(bigram, placement=False)
    bigram.add_argument("--no-progress", action="store_true", help="no progress bar")
    bigram.set_defaults(func=run)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..max_gram import BigramTable

    _check_out(args.out, args.force, parser)
    model_path, gguf = model_or_default(parser, args.model, args.gguf_file, "--model")
    check_sources(parser, args.device, model_path, gguf, [], "--model/--gguf-file", args.onednn_linear)
    models = load_models("bigram", args, model_path, gguf, {})
    if models is None:
        return 1
    model = models[0]
    t0 = time.perf_counter()
    try:
        table = BigramTable.from_model(model, batch_size=args.batch_size, progress=not args.no_progress)
    except CascadeError as e:
        print(f"hf-cascade bigram: error: {e}", file=sys.stderr)
        return 1
    table.save(args.out)
    log(f"built a {table.vocab_size}-token bigram table in {time.perf_counter() - t0:.1f} s; wrote {args.out}")
    print(args.out)
    return 0


def _check_out(out: str, force: bool, parser: argparse.ArgumentParser) -> None:
    """Fail before the (minutes-long) build when `out` cannot be written: empty, a directory, an existing file
    without `--force`, or a folder that cannot be created or written to. Creates the missing folders."""
    if not out.strip():
        parser.error("--out is empty; give the path of the .safetensors file to write")
    if os.path.isdir(out):
        parser.error(f"--out {out} is a directory; give the path of the .safetensors file to write")
    if os.path.exists(out) and not force:
        parser.error(f"--out {out} already exists; add --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {out}: cannot create its folder ({e})")
    if not os.access(parent, os.W_OK):
        parser.error(f"--out {out}: the folder {parent} is not writable")
