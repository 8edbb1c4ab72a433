"""The config part: lbsplit.toml -> frozen settings; every error names the field and the fix.

`settings` holds the dataclasses (each default declared once, in its field), `schema` the keys
and their TOML types, `values` the parsers of single values, `sections` and `health` one parser
per section, and `loader` reads the file and puts them together (a revert tolerates broken
sections it does not need). The rest of lbsplit imports from here.
May import: model, errors, validate.
"""

from .loader import DEFAULT_CONFIG, ENV_CONFIG, find_config, load
from .schema import SCHEMA
from .settings import (
    CustomMetric,
    FleetSettings,
    HealthSettings,
    HooksSettings,
    NginxSettings,
    NotifySettings,
    PlanSettings,
    PrometheusSettings,
    Settings,
    SplitSettings,
    Webhook,
)

__all__ = ["DEFAULT_CONFIG", "ENV_CONFIG", "SCHEMA", "CustomMetric", "FleetSettings", "HealthSettings", "HooksSettings",
           "NginxSettings", "NotifySettings", "PlanSettings", "PrometheusSettings", "Settings", "SplitSettings",
           "Webhook", "find_config", "load"]
