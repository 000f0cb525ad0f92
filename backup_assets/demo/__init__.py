"""Demo and test data: generated Sentry exports (:mod:`.synthetic`). Imports the core, never Dagster."""
