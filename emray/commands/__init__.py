"""One module per ``emray`` subcommand; see emray/cli.py."""
