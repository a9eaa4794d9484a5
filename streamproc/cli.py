"""The ``audiostream`` command. Each subcommand lives next to the code it runs.

Subcommand modules are imported only when needed by name, so
``audiostream produce-file`` on an edge device never imports librosa through
another subcommand.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import textwrap

from . import __version__
from .errors import AudiostreamError

# name -> (module with add_parser(sub) and a func default, one-line help)
COMMANDS = {
    "demo": ("consumers.demo", "local broker + analyzer + replayed clip, printing live predictions"),
    "produce-file": ("producers.file", "replay an audio file as a live stream"),
    "produce-mic": ("producers.mic", "stream a microphone (edge devices: buffering, reconnect)"),
    "devices": ("producers.devices", "list input devices"),
    "analyze": ("consumers.analyzer", "run the analyzer service"),
    "watch": ("consumers.watch", "live table of predictions per stream"),
    "topics": ("consumers.topics", "create or list audiostream's topics"),
    "config": ("streamproc.config", "show the effective configuration (secrets masked)"),
    "bench": ("consumers.bench", "streams per core: optimised engine vs naive librosa, or through Kafka"),
    "loadgen": ("producers.loadgen", "N synthetic real-time streams from one process"),
    "train-starter": ("streamproc.training.starter", "train the small starter model bundle"),
    "dataset": ("streamproc.training.dataset", "make a training dataset offline (speech/music/environment/silence)"),
    "train": ("streamproc.training.train", "train a model bundle from a folder-per-label dataset"),
    "evaluate": ("streamproc.training.evaluate", "scores and a confusion matrix for a bundle on labelled audio"),
    "compare": ("streamproc.training.compare", "MLP vs log-mel CNN on the same data and split: one table"),
    "models": ("streamproc.training.registry", "list model bundles"),
    "batch": ("consumers.batch", "analyse audio files into Parquet (local processes or Spark)"),
    "report": ("consumers.report", "HTML + PNG report from batch results or the live output topics"),
    "serve": ("consumers.api", "HTTP API: classify uploads, models, live streams, similar clips"),
    "transcribe": ("streamproc.transcribe", "speech to text for an audio file (offline Whisper on CPU)"),
}


def plain(text: str | None) -> str | None:
    """A module docstring as terminal text: reStructuredText's ``code`` marks and ``::`` dropped, the
    line structure (paragraphs, bullet lists) kept."""
    if not text:
        return text
    text = textwrap.dedent(text).strip("\n")
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.M).replace("\n::\n", "\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; an option's help ends with its default when it has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or not action.option_strings \
                or action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """Every audiostream (sub)command parser: plain-text descriptions, defaults in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("description"):
            kwargs["description"] = plain(kwargs["description"])
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    ap = Parser(prog="audiostream", description="Kafka real-time audio streaming analyzer")
    ap.add_argument("--version", action="version", version=f"audiostream {__version__}")
    ap.add_argument("--log-level", default=os.environ.get("AUDIOSTREAM_LOG_LEVEL", "INFO"))
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    ap.commands = sub
    for name, (module, help_text) in COMMANDS.items():
        if name == only:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    if extra:  # answered by the subcommand's own usage, not the top-level one
        (parser.commands.choices.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except AudiostreamError as exc:
        print(f"audiostream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
