"""pkd-harness: benchmark and evaluation harness for privileged multimodal knowledge distillation.

Python API: `from harness import api` (api.run, api.sweep, api.records, api.leaderboard; harness/api.py). Its
functions are not re-exported here: `harness.records` and `harness.leaderboard` are modules already, and this
package stays free of imports so that `harness --help` starts fast.
"""

__version__ = "0.1.0"
RECORD_SCHEMA_VERSION = 1
