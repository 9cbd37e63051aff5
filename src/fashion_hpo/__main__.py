"""`python -m fashion_hpo` runs the command-line interface."""

from fashion_hpo.cli import main

raise SystemExit(main())
