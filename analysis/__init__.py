"""Recorded video: jobs (SQLite under DATA_DIR), inputs, frame sampling, prompt answers, timed tags,
transcripts. `server.features.install_analysis` wires it into the app; `analysis.cli` is
`streamlens analyze`."""
