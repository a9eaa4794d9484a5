"""The command line as a person meets it: usage errors from the subcommand, readable help."""
import re
import subprocess
import sys

import pytest

from streamproc.cli import COMMANDS, build_parser


def run(*args):
    return subprocess.run([sys.executable, "-m", "streamproc.cli", *args], capture_output=True, text=True, timeout=120)


def test_an_unknown_flag_shows_the_subcommand_usage():
    r = run("watch", "--no-such-flag")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: audiostream watch"), r.stderr
    assert "audiostream watch: error: unrecognized arguments: --no-such-flag" in r.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_is_plain_text_with_defaults(name):
    parser = build_parser(name)
    text = parser.commands.choices[name].format_help()
    assert "``" not in text, text
    assert not re.search(r"\S::$", text, re.M), text
    sub = parser.commands.choices[name]
    formatter = sub._get_formatter()
    for action in sub._actions:  # an option with a value and help names its default
        if action.option_strings and action.help and action.default not in (None, False, [], "==SUPPRESS=="):
            assert "default" in formatter._get_help_string(action).lower(), (name, action.dest)


def test_bench_backlog_without_a_group_is_refused_saying_what_it_needs():
    r = run("bench", "--backlog", "--streams", "10")
    assert r.returncode != 0
    assert "--backlog times a consumer group catching up: give it with --kafka --analyzers N" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
