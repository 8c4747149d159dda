"""``python -m daydreamd``: the same as the ``daydreamd`` command."""

from daydreamd.daemon.lifecycle import main

main()
