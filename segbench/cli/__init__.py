"""segbench's commands, one module each: parse the arguments, call the libraries, return an exit status.
Every command's ``main(argv) -> int`` is wrapped by :func:`segbench.errors.command` (a user's mistake is
``error: ...`` and exit status 2, never a traceback). :mod:`.main` is the ``segbench`` command that
dispatches to them (``segbench evaluate ...``); ``python -m segbench.<command>`` is an alias of each."""
