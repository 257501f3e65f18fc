"""``python -m diffprune``: the same command line as ``diffprune``."""
from diffprune.cli import main

if __name__ == "__main__":
    main()
