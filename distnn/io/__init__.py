"""What distnn itself writes and reads back: checkpoints (Parquet tensors, JSON meta) on
any pyarrow filesystem, TensorBoard events, JSON metrics, Nielsen's network2 JSON,
ONNX/npz export, plots and PNG previews, and where and how they are written safely.
The datasets distnn reads (IDX, Parquet, pickled digits) are ``distnn.data``'s."""
