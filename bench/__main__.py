"""``python -m bench`` from the repository root (also ``python -m fedgin.bench``)."""
from .cli import main

raise SystemExit(main())
