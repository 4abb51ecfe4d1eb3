"""The CLI's command table and the ban path's own parser (no root)."""

from __future__ import annotations

import shlex
import sys

import pytest

from pyxdp.cli.main import first_word
from pyxdp.cli.parser import build_parser
from pyxdp.cli.quick import parse_quick
from pyxdp.cli.spec import TABLE, Args
from pyxdp.errors import UsageError

FORMS = [
    "ban A", "ban A B", "ban A --ttl 5", "ban --ttl 5 A", "ban --ttl 5 -- A", "ban A --ttl 5 B", "ban -- A B",
    "ban A -- B", "ban --set s -q -- A", "ban", "ban -q A", "ban A -q B", "ban -- A -- B", "ban -q", "ban --ttl 5",
    "ban --", "ban A --", "ban -- -q", "ban -- A -q", "ban -- -5", "ban A --ttl 5 --ttl 6", "ban --ttl 5 A B",
    "ban -q -- A B", "ban A B -q", "ban --quiet A", "ban --file f A", "ban --file - ", "ban --ttl '' A", "ban ''",
    "ban A --ttl 5 -- B", "ban A --ttl 5 --", "ban --ttl -5 A", "ban --ttl", "ban --ttl=5 A", "ban --tt 5 A",
    "ban -5", "ban --all A", "ban --set", "ban A --pin-dir x", "ban A --create", "ban ban", "ban --set -- A",
    "--create ban A", "--pin-dir x --create ban A", "--pin-dir x ban --ttl 5 -q -- A", "--pin-dir '' ban A",
    "--pin-dir ban ban A", "--log-file f --pin-dir x ban A", "--pin-dir x --pin-dir y ban A", "--pin-dir=x ban A",
    "--pin-dir -x ban A", "--log-file ban A", "--crea ban A", "-h ban A", "ban -h", "ban A --help",
    "unban A", "unban --all --set s", "unban --set s -- A", "unban --all", "unban A --all", "unban --ttl 5 A",
    "unban -q --file f", "unban -- --all", "--create unban A B -q",
    "ban -", "ban A - B", "ban --file - -q", "unban --file - --set s", "--pin-dir - ban A", "ban --set - A",
]


def _argparse(argv: list[str]) -> dict[str, object] | str:
    try:
        return vars(build_parser(first_word(argv)).parse_args(argv, namespace=Args()))
    except UsageError as exc:
        return f"usage: {exc}"


@pytest.mark.parametrize("form", FORMS)
def test_the_ban_path_reads_what_argparse_reads(form: str) -> None:
    argv = shlex.split(form)
    word = first_word(argv)  # as main: the ban path for these two, without -h
    quick = parse_quick(argv, word) if word in ("ban", "unban") and not {"-h", "--help"} & set(argv) else None
    if quick is not None:
        assert vars(quick) == _argparse(argv)


def test_the_plain_forms_take_the_ban_path() -> None:
    for form in ("ban 192.0.2.1", "--pin-dir /sys/fs/bpf/x --create ban --set f2b-sshd --ttl 600 -- 192.0.2.1",
                 "unban --set f2b-sshd -- 192.0.2.1", "unban --all --set f2b-sshd", "ban -q 192.0.2.0/24 2001:db8::1"):
        argv = shlex.split(form)
        assert parse_quick(argv, str(first_word(argv))) is not None, form


def test_every_command_has_a_handler_and_its_arguments() -> None:
    import importlib

    for cmd in TABLE.values():
        module, _, func = cmd.handler.partition(":")
        assert callable(getattr(importlib.import_module(f"pyxdp.cli.{module}"), func)), cmd.name
        parser = build_parser(cmd.name)
        assert parser.format_usage()
    assert list(TABLE)[:3] == ["attach", "detach", "status"] and len(TABLE) == 33


def test_importing_the_ban_path_imports_no_argparse() -> None:
    import subprocess

    code = ("import sys; import pyxdp.cli, pyxdp.cli.quick, pyxdp.cli.sets; "
            "print(' '.join(m for m in ('argparse', 'pyxdp.cli.parser') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
