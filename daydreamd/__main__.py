"""``python -m daydreamd``: the same as the ``daydreamd`` command."""

from daydreamd.daemon.service import main

main()
