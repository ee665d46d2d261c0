"""``python -m cmo_rl.compare.frozen key=value ...``: see :mod:`cmo_rl.compare.frozen`."""

from cmo_rl.compare.frozen import main

main()
