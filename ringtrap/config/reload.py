"""What a HUP changes: every key but those declared ``restart=True``.

The supervisor and the ingest compare the running configuration with the
reloaded one key by key and keep the restart-only keys as they started.
"""

from ringtrap.config.sections import Config, each_key, each_section


def restart_only() -> frozenset[str]:
    """The keys (``section.key``) declared to take effect at the next start only."""
    return frozenset(
        f"{section}.{key}"
        for section, cls in each_section()
        for key, setting in each_key(cls)
        if setting.restart
    )


def changed_keys(old: Config, new: Config) -> list[str]:
    """The keys (``section.key``) whose values differ between ``old`` and ``new``."""
    return [
        f"{section}.{key}"
        for section, cls in each_section()
        for key, _ in each_key(cls)
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)
    ]


def keep_restart_only(new: Config, old: Config) -> Config:
    """``new`` with every restart-only key set back to its value in ``old``.

    What a HUP applies: the running trap keeps what it set up at its start.
    """
    import dataclasses

    sections = {}
    for section, cls in each_section():
        fixed = {key: getattr(getattr(old, section), key)
                 for key, setting in each_key(cls) if setting.restart}
        if fixed:
            sections[section] = dataclasses.replace(getattr(new, section), **fixed)
    return dataclasses.replace(new, **sections)
