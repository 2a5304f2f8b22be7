from pipelines.app import main  # turbo's web UI and HTTP API: python app.py [--port N] [--model DIR]

raise SystemExit(main())
