"""TOML configuration: every setting declared once, validated in one pass.

The package's public names, re-exported from the modules that own them:

- ``values``: the value kinds (how one key's raw value is parsed, checked
  and written back), the value types and the byte-size units;
- ``hostdefaults``: defaults that depend on who runs the trap (root or not,
  the XDG directories, the CPUs, whether spamd is installed);
- ``sections``: one frozen dataclass per TOML section, each key a field
  declaring its kind, help and whether only a restart changes it;
- ``rules``: the checks across keys and the values several keys decide;
- ``loading``: TOML text or a file into a ``Config``, errors naming the file
  and ``section.key``;
- ``reload``: what a HUP may change;
- ``rendering``: the sample file and the docs table; ``manpage``: ringtrap(8).

The MTA-facing client imports this package on every delivery: modules needed
only to load a file or report an error are imported where they are used, and
the man page (argparse, re) is not imported here.
"""

from ringtrap.config.hostdefaults import find_spamd, keep_root_defaults, runtime_dir
from ringtrap.config.loading import (
    ConfigError,
    defaults,
    from_dict,
    load,
    load_text,
    override,
    to_dict,
)
from ringtrap.config.reload import changed_keys, keep_restart_only, restart_only
from ringtrap.config.rendering import (
    DOCS_NOTES,
    Declared,
    declarations,
    docs_table,
    sample_config,
)
from ringtrap.config.rules import (
    forward_dir,
    managed_spamd_learns,
    managed_spamd_tells,
    runs_managed_rspamd,
    runs_managed_spamd,
    stage_dir,
)
from ringtrap.config.sections import (
    VERDICT_NAMES,
    ArchiveConfig,
    Config,
    DedupeConfig,
    ForwardConfig,
    IngestConfig,
    MetricsConfig,
    OverflowConfig,
    PrefilterConfig,
    RecordsConfig,
    ResultsConfig,
    RingConfig,
    RspamdConfig,
    ServiceConfig,
    SpamdConfig,
    StageConfig,
    SupervisorConfig,
    WorkersConfig,
)
from ringtrap.config.values import (
    GiB,
    KiB,
    ListenAddress,
    MiB,
    SpamdAddress,
    format_size,
    parse_size,
)

__all__ = [
    "DOCS_NOTES",
    "VERDICT_NAMES",
    "ArchiveConfig",
    "Config",
    "ConfigError",
    "Declared",
    "DedupeConfig",
    "ForwardConfig",
    "GiB",
    "IngestConfig",
    "KiB",
    "ListenAddress",
    "MetricsConfig",
    "MiB",
    "OverflowConfig",
    "PrefilterConfig",
    "RecordsConfig",
    "ResultsConfig",
    "RingConfig",
    "RspamdConfig",
    "ServiceConfig",
    "SpamdAddress",
    "SpamdConfig",
    "StageConfig",
    "SupervisorConfig",
    "WorkersConfig",
    "changed_keys",
    "declarations",
    "defaults",
    "docs_table",
    "find_spamd",
    "format_size",
    "forward_dir",
    "from_dict",
    "keep_restart_only",
    "keep_root_defaults",
    "load",
    "load_text",
    "managed_spamd_learns",
    "managed_spamd_tells",
    "override",
    "parse_size",
    "restart_only",
    "runs_managed_rspamd",
    "runs_managed_spamd",
    "runtime_dir",
    "sample_config",
    "stage_dir",
    "to_dict",
]
