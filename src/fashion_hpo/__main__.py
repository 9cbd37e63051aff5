"""`python -m fashion_hpo` runs the command-line interface."""

from fashion_hpo.cli.main import main

raise SystemExit(main())
