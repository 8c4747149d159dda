"""``python -m daydreamd``: the same as the ``daydreamd`` command."""

from daydreamd.service import main

main()
