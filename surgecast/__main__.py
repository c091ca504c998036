from surgecast.cli import main

raise SystemExit(main())
