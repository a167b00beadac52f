from escalier.cli import main

raise SystemExit(main())
