from netblock.cli import main

raise SystemExit(main())
