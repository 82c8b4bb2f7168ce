"""pkd-harness: benchmark and evaluation harness for privileged multimodal knowledge distillation."""

__version__ = "0.1.0"
RECORD_SCHEMA_VERSION = 1
