"""The ``volseg`` command line: one thin module per subcommand."""
