"""SME Analytics Playbook: the consultant's side of the pipeline (local stack, provisioning, reports)."""

__version__ = "0.1.0"
