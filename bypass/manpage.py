"""bypass(1), written from the command line's own argparse definitions so it cannot drift from
them: `python -m bypass.manpage > bypass.1` (setup.py installs it as share/man/man1/bypass.1)."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
            name = ", ".join(f"\\fB{_escape(s)}\\fR{_escape(metavar)}" for s in action.option_strings)
        else:
            name = f"\\fI{_escape(action.metavar or action.dest.upper())}\\fR"
        out += [".TP", name, _escape(action.help or "")]
    return out


def _debug_section() -> list[str]:
    """The subsystems of `bypass run -d`, from the table the command line checks them against."""
    from .declared import RPC_SUBSYSTEM, RUNTIME_SUBSYSTEMS, SPEC_SUBSYSTEMS
    out = [".SH DEBUG OUTPUT", _escape(
        "bypass run SPEC -d SUBSYSTEM[,...] [-o FILE] -- COMMAND: the agent writes one line per event, "
        "\"AGENT PID SUBSYSTEM: text\", to FILE (appended; default stderr), from every process of the run. "
        "The file is held above the program's descriptors, close-on-exec, and carried through exec, so the "
        "program's output and descriptor numbers do not change; off, it costs one test per call. "
        "A name the agent does not report on is refused with the list of those it does. all: every one.")]
    for table, who in ((RUNTIME_SUBSYSTEMS, "every agent"), (RPC_SUBSYSTEM, "agents with shadow calls"),
                       (SPEC_SUBSYSTEMS, "agents whose spec declares it: options \"policy\" debug;")):
        for name, text in table.items():
            out += [".TP", f"\\fB{name}\\fR", _escape(f"{text} ({who})")]
    return out


def render() -> str:
    from .cli import ENVIRONMENT_HELP, _classic_parser, _parser
    top = _parser()
    commands = top._subparsers._group_actions[0]                  # type: ignore[union-attr]
    help_of = {choice.dest: choice.help for choice in commands._choices_actions}
    out = [f'.TH BYPASS 1 "" "bypass {__version__}" "User Commands"', ".SH NAME",
           "bypass \\- compile interposition specs into LD_PRELOAD agents and Python shadows",
           ".SH SYNOPSIS", "\\fBbypass\\fR \\fICOMMAND\\fR [\\fIoptions\\fR] ...", ".br",
           "\\fBbypass\\fR [\\fB\\-agent\\fR] [\\fB\\-shadow\\fR] [\\fB\\-o\\fR \\fIOUTPUT\\fR] \\fISPEC\\fR",
           ".SH DESCRIPTION", _escape(top.description or ""),
           ".SS The original interface", _escape(_classic_parser().description or "")]
    out += _option_lines(_classic_parser())
    out.append(".SH COMMANDS")
    for name, sub in commands.choices.items():
        out += [f".SS {name}", _escape(help_of.get(name) or "")]
        if sub.description:
            out += [".PP", _escape(sub.description)]
        if sub.add_help:
            out += _option_lines(sub)
        else:
            out += [".PP", f"Its options: \\fBbypass {name} \\-\\-help\\fR."]
    out += _debug_section()
    out += [".SH ENVIRONMENT", ".nf", _escape(ENVIRONMENT_HELP.strip()), ".fi",
            ".SH EXIT STATUS", "The command's own status under \\fBbypass run\\fR; 2 for bad input (a malformed "
            "spec, an option that cannot apply), with a one-line message and nothing written.",
            ".SH SEE ALSO", "README.md and docs/ in the Bypass source; \\fBld.so\\fR(8)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
