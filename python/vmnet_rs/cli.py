"""The ``vmnet-rs`` command line.

Exit codes (also in the README):

* 0: success
* 1: the operation failed (a :class:`vmnet_rs.VmnetError`, printed as one line)
* 2: bad usage or invalid configuration
* 130: interrupted
"""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from .errors import ConfigError, VmnetError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("vmnet_rs")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vmnet-rs")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """vmnet-rs: shared and host-only VM networks without root."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="vmnet-rs: %(levelname)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Entry point: runs the CLI and turns vmnet-rs errors into one line and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as e:
        click.echo(f"vmnet-rs: {e}", err=True)
        sys.exit(EXIT_USAGE)
    except VmnetError as e:
        click.echo(f"vmnet-rs: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


from .run import run_command  # noqa: E402

cli.add_command(run_command)

if __name__ == "__main__":
    main()
