"""`python -m tether.cli ...`: the `tether` command."""

from tether.cli import main
from tether.cli.console import exit_process

exit_process(main())
