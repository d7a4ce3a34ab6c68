"""`python -m hf_cascade.cli ...` is `hf-cascade ...`."""

import sys

from . import main

sys.exit(main())
