"""How every command fails: one line `error: ...` on stderr, exit 1 (2 for usage); --debug for the traceback."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence

import click

from ..core.errors import VitConvertError, VitConvertWarning

EXIT_ERROR = 1
EXIT_USAGE = 2


def run(command: click.Command, args: Sequence[str] | None = None) -> None:
    """Run a click command with our error contract (instead of click's standalone mode)."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get("VITCONVERT_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", VitConvertWarning)
            warnings.showwarning = _show_warning
            code = command.main(args, prog_name=os.path.basename(sys.argv[0]) or command.name,
                                standalone_mode=False)
    except click.Abort as e:
        if isinstance(e.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort outside standalone mode
            _fail("interrupted", 130, debug)
        _fail("aborted", EXIT_ERROR, debug)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        _fail(f"{e.format_message()}{hint}", EXIT_USAGE, debug)
    except click.ClickException as e:
        _fail(e.format_message(), EXIT_ERROR, debug)
    except VitConvertError as e:
        _fail(str(e), EXIT_ERROR, debug)
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): nothing to say
        sys.exit(EXIT_ERROR)
    except OSError as e:  # the disk or the file system, not a bug: e.g. no space left mid-write
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}", EXIT_ERROR, debug)
    except KeyboardInterrupt:
        _fail("interrupted", 130, debug)
    except Exception as e:  # a bug of ours: still one line, with the way to see more
        _fail(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback; "
              "please report it)", EXIT_ERROR, debug)
    # Outside standalone mode click returns ctx.exit(N)'s N (0 for --help) instead of exiting.
    if isinstance(code, int) and code:
        sys.exit(code)


def debug_option(command: click.Command) -> click.Command:
    """--debug in the command's option list. `run` takes it off the command line before click parses
    anything, so it works anywhere on the line (also before a subcommand's name) and for every
    failure, usage errors included; the option itself is there to be listed in --help."""
    return click.option("--debug", is_flag=True, expose_value=False,
                        help="On failure, print the traceback too (or set VITCONVERT_DEBUG=1).")(command)


# The library names an option both ways for its two kinds of reader: "--force (force=True)", "--heads N
# (num_heads=N)", "(--recursive / recursive=True)"; on the command line only the option is meant.
_PYTHON_NAME = re.compile(r"(--[\w-]+(?: [A-Z][A-Z_|]*)?)(?: \(\w+=[^()]*\)| / \w+=[^()\s]*)")


def cli_words(message: object) -> str:
    """A library message as the command line says it: the options without their Python keyword names."""
    return _PYTHON_NAME.sub(r"\1", str(message))


def error_line(message: object) -> str:
    """`error: MESSAGE` on one line, always: messages may quote a library's multi-line text."""
    return f"error: {' '.join(cli_words(message).split())}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one line `warning: ...` on stderr; anyone else's as Python prints them."""
    if issubclass(category, VitConvertWarning):
        click.echo(f"warning: {cli_words(message)}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    click.echo(error_line(message), err=True)
    sys.exit(code)
