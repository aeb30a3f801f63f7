"""The plain-Python core: nothing here imports Dagster."""
