from printfarmd.cli import main

raise SystemExit(main())
