#!/usr/bin/env python
"""Thin entry point of :func:`equivrepro.results.main` (console command ``equivrepro-collect``)."""

import sys

from equivrepro.results import main

if __name__ == "__main__":
    sys.exit(main())
