"""mvlm's test suite (a package, so that helpers import as tests.helpers.* without sys.path edits)."""
