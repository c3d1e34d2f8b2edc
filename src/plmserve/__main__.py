"""``python -m plmserve ...``: the same as the ``plmserve`` command."""

from plmserve.cli import main

if __name__ == "__main__":
    main()
