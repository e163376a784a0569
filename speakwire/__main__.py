from speakwire.cli import main

raise SystemExit(main())
