"""The pure core: format and crypto, manifest, streaming parse, staging, load, verify. Never imports Dagster."""
