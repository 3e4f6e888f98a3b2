"""
Small helpers every layer may use: name and port checks, request ids, the
home directory's file names, the replay window and the connect timeouts.

This package is ground, like :mod:`pilotproto.errors`, :mod:`pilotproto.wire`
and :mod:`pilotproto.identity`: it imports nothing else of pilotproto, so a
helper needed by two layers lives here instead of in the upper one.
"""
