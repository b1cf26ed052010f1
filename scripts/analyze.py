#!/usr/bin/env python
"""Thin entry point of the mechanism analyses: ``equivrepro-analyze`` (:mod:`equivrepro.analysis.report`)."""

import sys

from equivrepro.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
