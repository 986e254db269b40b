"""The one place that reads and writes weights files (checkpoints, exports), and the conversion of the paper authors' published checkpoints (official/)."""
