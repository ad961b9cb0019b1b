"""``python -m printfarmd`` and the ``printfarmd`` console script.

The command line's modules load under ``heap.loading`` (issue 17: no middle or full
collections while the heap only grows).
"""

from printfarmd import heap


def main() -> int:
    """Run the command line; returns its exit code."""
    with heap.loading():
        from printfarmd.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
