"""The `opentr` command line: `main` (the commands), `runner` (`opentr run`: every new upload
through the pipeline in runs the UI shows) and `instance` (the Dagster instance at DAGSTER_HOME).

Nothing imports this folder (an import-linter contract): it sits on top of both wings.
"""
