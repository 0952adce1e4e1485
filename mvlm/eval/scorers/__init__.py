"""One module per benchmark scorer (each: NAME, HELP, DESCRIPTION, add_arguments, run, score), plus shared helpers."""
