#!/usr/bin/env python
"""Thin entry point of :mod:`equivrepro.reproduce` (console command ``equivrepro-reproduce``)."""

import sys

from equivrepro.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
