"""``python -m harness.cli``: the ota-hil command without its console script on PATH."""

from . import main

main(prog_name="ota-hil")
