from fedgin.cli import main

raise SystemExit(main())
