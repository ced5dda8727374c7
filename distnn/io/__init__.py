"""The only code that knows file formats (PNG here; Parquet, TensorBoard and JSON
checkpoints as they arrive)."""
