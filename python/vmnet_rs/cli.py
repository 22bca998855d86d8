"""The ``vmnet-rs`` command line.

Every command takes ``-h``/``--help``; ``-v`` (info) and ``-vv`` (debug)
before the command turn on logging to stderr.

Exit codes (also in docs/usage.md):

* 0: success
* 1: the operation failed (a :class:`vmnet_rs.VmnetError`, printed as one line)
* 2: bad usage or invalid configuration (every problem printed, one per line)
* 127: ``run`` only: the VM program was not found
* 130: interrupted

``vmnet-rs run`` otherwise exits with the VM's own status (128 + N for death
by signal N).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, List, Optional

import click

from . import __version__
from .errors import ConfigError, VmnetError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("vmnet_rs")


def report_error(err: VmnetError) -> int:
    """Prints a vmnet-rs error to stderr, ``vmnet-rs: `` before each line, and
    returns its exit code: 2 for configuration problems, else 1."""
    for line in str(err).splitlines() or [type(err).__name__]:
        click.echo(f"vmnet-rs: {line}", err=True)
    return EXIT_USAGE if isinstance(err, ConfigError) else EXIT_FAILED


class VmnetGroup(click.Group):
    """A click group that turns vmnet-rs errors from any subcommand into a
    message and an exit code, the same under ``main()`` and click's test runner."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VmnetError as e:
            ctx.exit(report_error(e))


@click.group(cls=VmnetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vmnet-rs")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """vmnet-rs: shared and host-only VM networks without root.

    Each command explains itself with --help; the full documentation is the
    docs/ folder of the vmnet-rs source (repository or source distribution),
    starting at docs/architecture.md.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="vmnet-rs: %(levelname)s: %(message)s", stream=sys.stderr)
    log.setLevel(level)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: runs the CLI and turns vmnet-rs errors into messages and exit codes."""
    try:
        # Without standalone mode click returns the code of a ctx.exit() instead of raising.
        rv = cli.main(args=argv, prog_name="vmnet-rs", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except VmnetError as e:
        sys.exit(report_error(e))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


# Commands, each from its own module.
from .leases import leases  # noqa: E402
from .networks_cli import networks  # noqa: E402
from .run import run_command  # noqa: E402
from .bench import bench  # noqa: E402
from .broker_cli import broker_command  # noqa: E402
from .install import install_command, uninstall_command  # noqa: E402
from .status_cli import status_command  # noqa: E402
from .doctor import doctor_command  # noqa: E402
from .resolve_cli import resolve_command  # noqa: E402

cli.add_command(networks)
cli.add_command(leases)
cli.add_command(run_command)
cli.add_command(bench)
cli.add_command(broker_command)
cli.add_command(install_command)
cli.add_command(uninstall_command)
cli.add_command(status_command)
cli.add_command(doctor_command)
cli.add_command(resolve_command)

if __name__ == "__main__":
    main()
