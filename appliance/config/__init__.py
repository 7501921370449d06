"""Configuration: one TOML file, one schema that drives defaults, validation, help and `show`.

Every value remembers where it came from (default or file), so an error names the file, the key
and what is wrong, in one line.
"""

from appliance.config.load import Config, ConfigError, load_config
from appliance.config.schema import SCHEMA, Option

__all__ = ["SCHEMA", "Config", "ConfigError", "Option", "load_config"]
