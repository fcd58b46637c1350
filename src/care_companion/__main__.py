"""``python -m care_companion``: the command line, as the ``care-companion`` script runs it."""

from care_companion.cli.main import app

if __name__ == "__main__":
    app()
