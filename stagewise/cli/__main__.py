"""`python -m stagewise.cli ...`: the `stagewise` command."""

from stagewise.cli import main

if __name__ == "__main__":
    main()
