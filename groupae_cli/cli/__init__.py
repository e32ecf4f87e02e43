"""One module per `groupae` subcommand; each parses and validates, the library does the work."""
