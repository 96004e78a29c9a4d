"""`python -m bench`: the cost benchmark (bench/run.py)."""

from bench.run import main

raise SystemExit(main())
