import dagster as dg

# One partition per media file; keys come from opentr_pipeline.core.keys.
media_files = dg.DynamicPartitionsDefinition(name="media_files")
