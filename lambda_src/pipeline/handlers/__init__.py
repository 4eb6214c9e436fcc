"""Lambda entry points, one module per function: `pipeline.handlers.<name>.handler`."""
