"""``pilotctl``, the command line for a pilot node (see :mod:`pilotproto.cli.main`)."""
