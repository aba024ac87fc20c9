"""The declarations: one frozen dataclass per TOML section, one field per key.

A field's metadata is a ``Setting``: the key's kind (parser, validation,
rendering), its help text, how a host-dependent default is chosen, and
whether a HUP changes it or only the next start (``restart=True``).  The
loader, the reload, the sample file and the docs all walk these
declarations, so a setting is described in exactly one place.
"""

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from ringtrap.base.states import Verdict
from ringtrap.config.hostdefaults import (
    BESIDE_INGEST,
    beside_ingest,
    default_bayes_dir,
    default_forward_host,
    default_overflow_dir,
    default_results_dir,
    default_ring_name,
    default_rspamd_db_dir,
    default_socket,
    default_spamd_address,
    default_worker_count,
)
from ringtrap.config.values import (
    Account,
    Bool,
    Choice,
    ChoiceList,
    FilePath,
    GiB,
    Integer,
    IPv4Text,
    KiB,
    Kind,
    Listen,
    ListenAddress,
    MiB,
    Mode,
    NatsServers,
    NetworkList,
    RspamdAddressKind,
    Seconds,
    ShmName,
    Size,
    SpamdAddress,
    SpamdAddressKind,
    StageAddressKind,
    SubjectPrefix,
    Text,
    TextList,
    TimeOfDay,
    lookup_group,
    lookup_user,
)

SETTING_META = "ringtrap.setting"


@dataclass(frozen=True, slots=True)
class Setting:
    """What the loader, the sample file and the docs know about one key."""

    kind: Kind
    help: str
    varies: str  # for the docs: how a host-dependent default is chosen
    # a HUP does not change it: what it sets up (a socket, the ring, a
    # directory handed to the service user, the log) lives as long as the trap
    restart: bool = False


def about(
    kind: Kind, help: str, *, varies: str = "", restart: bool = False
) -> dict[str, Setting]:
    """Field metadata declaring one key.

    ``varies`` must describe a default computed by a ``default_factory``:
    the docs table shows that text, so it is the same on every host.
    ``restart``: the key takes effect at the next start only; every other key
    takes effect in every process on HUP.
    """
    return {SETTING_META: Setting(kind, help, varies, restart)}


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """[ingest]: the Unix socket the MTA delivers to."""

    socket: Path = field(
        default_factory=default_socket,
        metadata=about(
            FilePath(unix_socket=True),
            "Unix socket of the raw protocol: socat or nc -U hand over a bare message, no"
            " envelope (MTAs should use the submit or LMTP socket).",
            varies="`<runtime>/ingest.sock`",
            restart=True,
        ),
    )
    socket_mode: int = field(
        default=0o660,
        metadata=about(
            Mode(),
            "Permissions of the ingest socket; a client needs write permission to connect.",
            restart=True,
        ),
    )
    socket_group: str = field(
        default="",
        metadata=about(
            Account("group", lookup_group),
            "Group owning the ingest socket, to let the MTA's delivery user in;"
            ' "" keeps the group of the ringtrap process.',
            restart=True,
        ),
    )
    max_message_bytes: int = field(
        default=50 * MiB,
        metadata=about(
            Size(lo=KiB),
            "Largest message accepted; a larger one is read to its end, discarded and refused.",
        ),
    )
    idle_timeout: float = field(
        default=30.0,
        metadata=about(
            Seconds(), "Seconds a client connection may stay silent before it is closed."
        ),
    )
    message_timeout: float = field(
        default=300.0,
        metadata=about(
            Seconds(),
            "Seconds a connection may take over one message however steadily it sends;"
            " past them it is answered TEMPFAIL (LMTP 421) and closed.",
        ),
    )
    max_connections: int = field(
        default=256,
        metadata=about(
            Integer(lo=1),
            "Most connections the raw socket serves at once; the submit and LMTP sockets"
            " have budgets of their own, so the raw socket cannot starve them.",
        ),
    )
    submit_max_connections: int = field(
        default=256,
        metadata=about(Integer(lo=1), "Most connections the submit socket serves at once."),
    )
    lmtp_max_connections: int = field(
        default=64,
        metadata=about(Integer(lo=1), "Most connections the LMTP socket serves at once."),
    )
    submit_socket: Path | None = field(
        default_factory=beside_ingest,
        metadata=about(
            FilePath(optional=True, unix_socket=True),
            "Unix socket for `ringtrap submit` and `ringtrap-deliver`: the MTA's envelope"
            " (sender, recipients, client, queue id) comes with each message, and a message"
            ' cut short is refused; same mode and group as ingest.socket; "" = off.',
            varies="`submit.sock` beside `ingest.socket`",
            restart=True,
        ),
    )
    lmtp_socket: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True, unix_socket=True),
            "Unix socket speaking LMTP (RFC 2033) for Postfix's lmtp client or Exim's lmtp"
            ' transport; same mode and group as ingest.socket; "" = off.',
            restart=True,
        ),
    )

    def __post_init__(self) -> None:
        # the default submit socket follows ingest.socket, so one setting moves both
        if self.submit_socket is BESIDE_INGEST:
            object.__setattr__(self, "submit_socket", self.socket.parent / "submit.sock")


@dataclass(frozen=True, slots=True)
class RingConfig:
    """[ring]: the shared-memory ring of fixed-size slots."""

    name: str = field(
        default_factory=default_ring_name,
        metadata=about(
            ShmName(),
            "Name of the POSIX shared-memory segment, also the prefix of its semaphores;"
            " two traps on one host need different names.",
            varies='`"ringtrap"` as root, else `"ringtrap-<uid>"`',
            restart=True,
        ),
    )
    slots: int = field(
        default=1024,
        metadata=about(
            Integer(lo=1, hi=1_000_000),
            "Number of slots: how many messages the ring holds before the ingest spills"
            " to the overflow directory.",
            restart=True,
        ),
    )
    slot_bytes: int = field(
        default=64 * KiB,
        metadata=about(
            Size(lo=KiB, hi=64 * MiB),
            "Size of one slot; a larger message skips the ring and goes to the overflow directory.",
            restart=True,
        ),
    )
    mode: int = field(
        default=0o600,
        metadata=about(
            Mode(owner_rw=True), "Permissions of the shared-memory segment and its semaphores.",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class OverflowConfig:
    """[overflow]: the tmpfs spill directory."""

    dir: Path = field(
        default_factory=default_overflow_dir,
        metadata=about(
            FilePath(),
            "Spill directory for messages that find the ring full or do not fit a slot;"
            " keep it on tmpfs.",
            varies="`/dev/shm/ringtrap.overflow` as root, else `/dev/shm/ringtrap-<uid>.overflow`",
            restart=True,
        ),
    )
    max_bytes: int = field(
        default=GiB,
        metadata=about(
            Size(lo=MiB),
            "Cap on the bytes held in the overflow directory; past it new messages are"
            " refused rather than eat the host's memory.",
        ),
    )
    purge_at: datetime.time = field(
        default=datetime.time(4, 0),
        metadata=about(
            TimeOfDay(),
            "Local time of day when the overflow backlog is dropped, so a flood never"
            " leaves more than a day of backlog.",
        ),
    )
    max_attempts: int = field(
        default=3,
        metadata=about(
            Integer(lo=1),
            "A message that kills its worker this many times is quarantined, not retried.",
        ),
    )
    quarantine_max_bytes: int = field(
        default=64 * MiB,
        metadata=about(
            Size(lo=MiB),
            "Cap on the quarantined messages kept in failed/ (of the overflow and of the"
            " stage, each); past it the oldest are dropped. Quarantine never counts toward"
            " overflow.max_bytes, so it cannot block spills.",
        ),
    )
    drain_order: str = field(
        default="oldest",
        metadata=about(
            Choice(("oldest", "newest")),
            'Which mail workers scan first when they cannot scan it all: "oldest" takes'
            " the ring, then the overflow, in arrival order; \"newest\" takes the"
            " overflow's latest while it holds mail newer than the ring's oldest, so a"
            " flood's freshest spam is analysed and the purge drops the stale rest.",
        ),
    )
    quarantine_retention_days: int = field(
        default=1,
        metadata=about(
            Integer(lo=0),
            "Days a quarantined message is kept: the daily purge drops those that arrived"
            " more than this many days minus one before it (1 = all of them, with the"
            " backlog); 0 = never by age, only the cap and 'ringtrap purge --quarantine'.",
        ),
    )


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    """[workers]: the static pool of processing workers."""

    count: int = field(
        default_factory=default_worker_count,
        metadata=about(
            Integer(lo=1, hi=1024),
            "Number of worker processes draining the ring and the overflow directory.",
            varies="number of CPUs (`os.cpu_count()`, 2 if unknown)",
        ),
    )
    max_rss_bytes: int = field(
        default=256 * MiB,
        metadata=about(
            Size(lo=32 * MiB, zero_unlimited=True),
            "Resident memory above which a worker is replaced after its current message;"
            " 0 = unlimited.",
        ),
    )
    heartbeat_timeout: float = field(
        default=360.0,
        metadata=about(
            Seconds(),
            "Seconds without a heartbeat after which the supervisor takes a worker for hung"
            " and kills it; must exceed spamd.timeout.",
        ),
    )
    scan_limit_bytes: int = field(
        default=500 * KiB,
        metadata=about(
            Size(lo=KiB),
            "Larger messages are recorded without being sent to spamd (spamc's own limit"
            " is 500 KB).",
        ),
    )


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    """[scanner]: which scanner gives the verdicts, and how a pool of its hosts is used."""

    kind: str = field(
        default="spamd",
        metadata=about(
            Choice(("spamd", "rspamd")),
            '"spamd": SpamAssassin\'s spamd ([spamd]), the verdicts of spamc; "rspamd":'
            " rspamd ([rspamd]), some 25 times faster, with scores of its own.",
            restart=True,
        ),
    )
    breaker_errors: int = field(
        default=4,
        metadata=about(
            Integer(lo=1, hi=1000),
            "A scanner host that fails this many times within scanner.breaker_window"
            " is taken out of its pool (its breaker opens).",
        ),
    )
    breaker_window: float = field(
        default=10.0,
        metadata=about(Seconds(), "Seconds over which a host's failures are counted."),
    )
    hung_after: float = field(
        default=10.0,
        metadata=about(
            Seconds(),
            "In a pool of several hosts: a scan without a reply after this many seconds"
            " PINGs its host (again as often); no PONG within 5 s takes the host for hung,"
            " its breaker opens and the message goes to the next host. A sole host waits"
            " the whole spamd.timeout.",
        ),
    )
    breaker_revive: float = field(
        default=60.0,
        metadata=about(
            Seconds(),
            "Seconds an open host stays out before one PING may bring it back"
            " (each wait varies by up to 40% so workers do not return together).",
        ),
    )


@dataclass(frozen=True, slots=True)
class SpamdConfig:
    """[spamd]: how workers score messages."""

    address: SpamdAddress = field(
        default_factory=default_spamd_address,
        metadata=about(
            SpamdAddressKind(),
            '"managed": the supervisor runs its own spamd on a private socket;'
            ' "unix:/path", "tcp:host:port" or "tls:host:port" (spamd --listen=ssl:...):'
            ' use a running spamd; a list of those: a pool, scanned in turn, failing over'
            ' and taking a failing host out (scanner.breaker_*);'
            ' "off": record messages without a spamd score.',
            varies='`"managed"` if spamd is installed (on `PATH`, in `/usr/sbin` or'
            ' `/usr/local/sbin`), else `"off"`',
            restart=True,
        ),
    )
    timeout: float = field(
        default=330.0,
        metadata=about(
            Seconds(),
            "Seconds a worker waits for spamd's answer to one message; must exceed spamd's"
            " child timeout (--timeout-child, 300 s by default) so spamd gives up first,"
            " and stay below workers.heartbeat_timeout.",
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=about(Seconds(), "Seconds a worker waits to connect to spamd."),
    )
    tls_ca: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'CA certificates (PEM) a "tls:" spamd\'s certificate must chain to, its name'
            ' matching the address\'s host; "" = the system\'s CAs.',
            restart=True,
        ),
    )
    children: int = field(
        default=0,
        metadata=about(
            Integer(lo=0, hi=1024),
            "Children of a managed spamd (--max-children); 0 = one per worker (workers.count).",
            restart=True,
        ),
    )
    extra_args: tuple[str, ...] = field(
        default=(),
        metadata=about(
            TextList(), "Further command-line arguments for a managed spamd.", restart=True
        ),
    )
    command: str = field(
        default="spamd",
        metadata=about(
            Text(),
            "Program run as a managed spamd: a path, or a name looked up on PATH and then"
            " in /usr/sbin and /usr/local/sbin.",
            restart=True,
        ),
    )
    bayes_dir: Path = field(
        default_factory=default_bayes_dir,
        metadata=about(
            FilePath(),
            "Bayes database of a managed spamd when the stage learns through it"
            " (stage.learn): created and handed to the user spamd runs as (nobody when"
            " started as root without service.user); every directory above it must be"
            " searchable by that user.",
            varies="`/var/lib/ringtrap/bayes` as root, else `$XDG_STATE_HOME/ringtrap/bayes`"
            " (`~/.local/state/ringtrap/bayes` when unset)",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class RspamdConfig:
    """[rspamd]: how workers score messages when scanner.kind is "rspamd"."""

    address: SpamdAddress = field(
        default=SpamdAddress("managed"),
        metadata=about(
            RspamdAddressKind(),
            '"managed": the supervisor runs its own rspamd on a private socket;'
            ' "unix:/path" or "tcp:host:port": the normal worker of a running rspamd;'
            " a list of those: a pool, each worker moving on from host to host (see"
            " [scanner]).",
            restart=True,
        ),
    )
    timeout: float = field(
        default=60.0,
        metadata=about(
            Seconds(),
            "Seconds a worker waits for rspamd's answer to one message; must exceed"
            " rspamd's task_timeout (8 s by default) and stay below"
            " workers.heartbeat_timeout.",
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=about(Seconds(), "Seconds a worker waits to connect to rspamd."),
    )
    workers: int = field(
        default=0,
        metadata=about(
            Integer(lo=0, hi=1024),
            "Normal workers of a managed rspamd (its count); 0 = one per worker"
            " (workers.count).",
            restart=True,
        ),
    )
    network: bool = field(
        default=False,
        metadata=about(
            Bool(),
            "Let a managed rspamd run its network checks: RBL and SURBL lookups, SPF,"
            " DKIM, DMARC, ASN, fuzzy hashes, DCC, MX checks. Off: those modules are"
            " disabled (maps it fetches from the network may still be tried).",
            restart=True,
        ),
    )
    nameservers: tuple[str, ...] = field(
        default=(),
        metadata=about(
            TextList(),
            'DNS servers of a managed rspamd, e.g. ["127.0.0.1:53"]; empty = the'
            " host's resolv.conf.",
            restart=True,
        ),
    )
    command: str = field(
        default="rspamd",
        metadata=about(
            Text(),
            "Program run as a managed rspamd: a path, or a name looked up on PATH and then"
            " in /usr/sbin and /usr/local/sbin.",
            restart=True,
        ),
    )
    db_dir: Path = field(
        default_factory=default_rspamd_db_dir,
        metadata=about(
            FilePath(),
            "A managed rspamd's DBDIR: its compiled Hyperscan databases (a first start"
            " compiles them for tens of seconds; later starts reuse them) and statistics."
            " Created and handed to the user rspamd runs as.",
            varies="`/var/lib/ringtrap/rspamd` as root, else"
            " `$XDG_STATE_HOME/ringtrap/rspamd` (`~/.local/state/ringtrap/rspamd` when"
            " unset)",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    """[results]: where result records go."""

    dir: Path = field(
        default_factory=default_results_dir,
        metadata=about(
            FilePath(),
            "Directory for result records (JSON lines).",
            varies="`/var/lib/ringtrap/results` as root, else"
            " `$XDG_STATE_HOME/ringtrap/results` (`~/.local/state/ringtrap/results`"
            " when unset)",
            restart=True,
        ),
    )
    retention_days: int = field(
        default=0,
        metadata=about(
            Integer(lo=0),
            "Days of result files kept (today included); older files are removed;"
            " 0 = keep all.",
        ),
    )


# the verdicts of the messages a worker processed, as the configuration names
# them (a quarantined message is never archived or handed on: it is not read)
VERDICT_NAMES = tuple(v.value for v in Verdict if v is not Verdict.QUARANTINED)


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """[records]: what goes into a result record."""

    trusted_networks: tuple[str, ...] = field(
        default=(),
        metadata=about(
            NetworkList(),
            "The trap's own relays: Received hops from these networks (and loopback) are"
            " skipped when the relay IP and HELO are read from the message because the MTA"
            " gave none.",
        ),
    )


@dataclass(frozen=True, slots=True)
class PrefilterConfig:
    """[prefilter]: cheap checks that record a message without scanning it."""

    checks: tuple[str, ...] = field(
        default=("virus", "bounce", "autoreply"),
        metadata=about(
            ChoiceList(("virus", "bounce", "autoreply")),
            "Prefilters in force: mail they match is recorded with that verdict and not sent"
            " to spamd. Oversize mail (workers.scan_limit_bytes) is never scanned; mail"
            " ringtrap cannot parse is scanned, with a parse_error in its record.",
        ),
    )


@dataclass(frozen=True, slots=True)
class DedupeConfig:
    """[dedupe]: recognising campaign repeats by body fingerprint."""

    enabled: bool = field(
        default=True,
        metadata=about(
            Bool(),
            "Look each message's body fingerprint up among those scanned within"
            " dedupe.window (a SQLite file in results.dir shared by all workers) and record"
            " the first message's id as duplicate_of.",
        ),
    )
    skip_scan: bool = field(
        default=True,
        metadata=about(
            Bool(),
            'Do not scan a repeat: record it as verdict "duplicate" with the first'
            " message's score and rules (on a campaign-heavy corpus it saved 70% of the"
            " scans, each inherited verdict the repeat's own); false scans every copy.",
        ),
    )
    window: float = field(
        default=86400.0,
        metadata=about(
            Seconds(), "Seconds after its first scan during which a fingerprint counts as seen."
        ),
    )
    store: str = field(
        default="sqlite",
        metadata=about(
            Choice(("sqlite", "nats")),
            '"sqlite": this host\'s first scans only; "nats": also the whole fleet\'s, through'
            " a JetStream key-value bucket on forward.servers (entries expire after"
            " dedupe.window), so a campaign scanned on one trap is a repeat on every other."
            " A cache: with the broker away a host uses its own store and scans.",
        ),
    )
    bucket: str = field(
        default="ringtrap-dedupe",
        metadata=about(
            SubjectPrefix(single=True),
            "The fleet's key-value bucket (dedupe.store = \"nats\"); created if missing with"
            " forward.replicas replicas.",
        ),
    )


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """[archive]: the Maildir corpus of the messages themselves."""

    dir: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            "Directory of the Maildir archive, one Maildir per UTC day and verdict"
            ' (<dir>/YYYY-MM-DD/<verdict>/new/); "" = no archive.',
            restart=True,
        ),
    )
    verdicts: tuple[str, ...] = field(
        default=("spam", "ham", "not_scanned", "error", "virus", "oversize", "unparseable",
                 "duplicate"),
        metadata=about(
            ChoiceList(VERDICT_NAMES),
            "Verdicts whose messages are archived.",
        ),
    )
    retention_days: int = field(
        default=30,
        metadata=about(
            Integer(lo=0),
            "Days of archive kept (today included); older days are removed; 0 = keep all.",
        ),
    )
    trace_headers: bool = field(
        default=False,
        metadata=about(
            Bool(),
            "Prepend the envelope to each archived copy as the trace fields a delivering"
            " MTA writes (Return-Path, X-Original-To, Delivered-To, a Received line with"
            " the relay's HELO and IP), so the corpus carries its relays for mass-check."
            " Off: the copy is the message as delivered, byte for byte, as it was scanned.",
        ),
    )


@dataclass(frozen=True, slots=True)
class StageConfig:
    """[stage]: the slower stage that learns from and reports scanned mail."""

    workers: int = field(
        default=0,
        metadata=about(
            Integer(lo=0, hi=64),
            "Processes of the slower stage (learning, reporting); 0 = no stage. Scan workers"
            " hand messages to it through its own spill directory and never wait for it.",
            restart=True,
        ),
    )
    learn: bool = field(
        default=True,
        metadata=about(
            Bool(),
            "Teach spamd's Bayes that every handed-on message is spam (TELL, Set: local;"
            " spamd needs --allow-tell and a writable Bayes database).",
        ),
    )
    report: bool = field(
        default=False,
        metadata=about(
            Bool(),
            "Report every handed-on message as spam to the remote networks spamd is"
            " configured for (TELL, Set: remote: Razor, Pyzor, DCC, SpamCop).",
        ),
    )
    verdicts: tuple[str, ...] = field(
        default=("spam", "ham"),
        metadata=about(
            ChoiceList(VERDICT_NAMES),
            "Verdicts of the messages handed on (all trap mail is spam: a ham verdict is one"
            " spamd missed).",
        ),
    )
    address: SpamdAddress | None = field(
        default=None,
        metadata=about(
            StageAddressKind(),
            'spamd the stage talks to: "" = the scanning spamd (spamd.address, if one'
            ' host), or "unix:/path", "tcp:host:port" or "tls:host:port" for a separate'
            ' one, e.g. one allowed to report.',
        ),
    )
    timeout: float = field(
        default=120.0,
        metadata=about(
            Seconds(),
            "Seconds one learn or report call may take; remote networks can be slow. Must stay"
            " below workers.heartbeat_timeout.",
        ),
    )
    dir: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'Spill directory the scan workers hand messages on through; "" ='
            ' "<overflow.dir>-stage2". Keep it on tmpfs; it is purged with the overflow.',
            restart=True,
        ),
    )
    max_bytes: int = field(
        default=256 * MiB,
        metadata=about(
            Size(lo=MiB),
            "Cap on the stage's backlog in bytes; past it messages are not handed on"
            " (counted as stage_dropped), so a dead stage never fills the host's memory.",
        ),
    )


# what a trap hit is for the blocklist: any delivery whose relay sent it on its
# own account; a bounce or an auto-reply comes from a mail server answering a
# forged sender (backscatter), and listing that server would punish the victim
BLOCKLIST_VERDICTS = tuple(v for v in VERDICT_NAMES if v not in ("bounce", "autoreply"))


@dataclass(frozen=True, slots=True)
class BlocklistConfig:
    """[blocklist]: the relays that hit the trap, as DNSBL zones and access maps."""

    interval: int = field(
        default=0,
        metadata=about(
            Integer(lo=0),
            "Seconds between two writes of the blocklist files by the running trap (in a"
            " short-lived child of the supervisor); 0 = only on demand (`ringtrap blocklist`).",
        ),
    )
    window_days: int = field(
        default=7,
        metadata=about(Integer(lo=1, hi=366), "Days of result records read (today included)."),
    )
    min_hits: int = field(
        default=2,
        metadata=about(
            Integer(lo=1),
            "Trap hits in the window an address (or network) needs to be listed; one hit is"
            " often a mistyped address.",
        ),
    )
    min_recipients: int = field(
        default=1,
        metadata=about(
            Integer(lo=1),
            "Distinct trap recipients an address needs as well; 1 = no such condition.",
        ),
    )
    expire_days: int = field(
        default=3,
        metadata=about(
            Integer(lo=1, hi=366),
            "Quiet days after which an entry leaves the list: listed only while its last hit"
            " is more recent (at most blocklist.window_days).",
        ),
    )
    ipv4_prefix: int = field(
        default=32,
        metadata=about(Integer(lo=8, hi=32), "IPv4 hits are counted and listed by this prefix."),
    )
    ipv6_prefix: int = field(
        default=64,
        metadata=about(
            Integer(lo=16, hi=128),
            "IPv6 hits are counted and listed by this prefix (a host usually holds a /64);"
            " rbldnsd's ip6tset takes /64 only: serve another prefix as ip6trie.",
        ),
    )
    allow: tuple[str, ...] = field(
        default=(),
        metadata=about(
            NetworkList(),
            "Networks never listed, besides records.trusted_networks and loopback; an entry"
            " whose network overlaps one is not listed either.",
        ),
    )
    list_reserved: bool = field(
        default=False,
        metadata=about(
            Bool(),
            "List private, shared, documentation and other non-global addresses too (never"
            " loopback): only for a trap that sees such relays on purpose, or a test.",
        ),
    )
    verdicts: tuple[str, ...] = field(
        default=BLOCKLIST_VERDICTS,
        metadata=about(
            ChoiceList(VERDICT_NAMES),
            "Verdicts of the records that count as hits; bounces and auto-replies are"
            " left out by default: their relays answer forged senders.",
        ),
    )
    a_value: str = field(
        default="127.0.0.2",
        metadata=about(IPv4Text(), "A record the rbldnsd zones answer for a listed address."),
    )
    txt: str = field(
        default="listed by ringtrap trap",
        metadata=about(
            Text(),
            "TXT record of the rbldnsd zones (rbldnsd puts the queried address for $) and"
            " text of the Postfix map's REJECT, followed there by the hit count.",
        ),
    )
    rbldnsd_ip4: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'rbldnsd ip4set file of the IPv4 entries; "" = not written.',
        ),
    )
    rbldnsd_ip6: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'rbldnsd file of the IPv6 entries (ip6tset for /64, else ip6trie); "" = not'
            " written.",
        ),
    )
    postfix: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'Postfix cidr access map (check_client_access cidr:FILE); "" = not written.',
        ),
    )
    plain: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'Plain list, one network (CIDR) per line, for ipset or nftables; "" = not written.',
        ),
    )
    json: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'JSON: every listed entry with its counts, and what was read; "" = not written.',
        ),
    )

    def paths(self) -> dict[str, Path]:
        """The formats to write, by name, with their files."""
        every = {"rbldnsd_ip4": self.rbldnsd_ip4, "rbldnsd_ip6": self.rbldnsd_ip6,
                 "postfix": self.postfix, "plain": self.plain, "json": self.json}
        return {name: path for name, path in every.items() if path is not None}


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """[forward]: streaming this host's records (and raw messages) to NATS JetStream."""

    enabled: bool = field(
        default=False,
        metadata=about(
            Bool(),
            "Run the forwarder: it follows the result files and publishes every record to"
            " JetStream, keyed by the record's id; the local files stay the source of truth.",
            restart=True,
        ),
    )
    servers: tuple[str, ...] = field(
        default=("nats://127.0.0.1:4222",),
        metadata=about(
            NatsServers(),
            "NATS servers to connect to; list several nodes of a cluster, the client"
            " fails over between them.",
        ),
    )
    subject_prefix: str = field(
        default="ringtrap",
        metadata=about(
            SubjectPrefix(),
            "Records go to <prefix>.<host>.record, raw messages to <prefix>.<host>.raw.",
        ),
    )
    host: str = field(
        default_factory=default_forward_host,
        metadata=about(
            SubjectPrefix(single=True),
            "This trap's name in the fleet: a subject token, unique per host.",
            varies="the host name's first label (`trap` if it is not a subject token)",
        ),
    )
    stream: str = field(
        default="RINGTRAP",
        metadata=about(
            SubjectPrefix(single=True),
            "JetStream stream taking <prefix>.>; created (file storage) if it is missing.",
        ),
    )
    replicas: int = field(
        default=1,
        metadata=about(
            Integer(lo=1, hi=5),
            "Replicas of a stream the forwarder creates (3 on a three-node cluster);"
            " an existing stream is left as it is.",
        ),
    )
    duplicate_window: float = field(
        default=300.0,
        metadata=about(
            Seconds(),
            "Duplicate window of a stream the forwarder creates: a record re-sent within"
            " it (after a crash or a lost ack) is stored once. Later repeats are removed"
            " by the collector, which keys on the id.",
        ),
    )
    ack_timeout: float = field(
        default=10.0,
        metadata=about(
            Seconds(),
            "Seconds to wait for the broker's acknowledgement of a publish before the"
            " forwarder backs off and sends it again.",
        ),
    )
    tls_ca_file: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'CA certificates that sign the servers\' certificates (TLS); "" = none.',
        ),
    )
    tls_cert_file: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'Client certificate for TLS (with forward.tls_key_file); "" = none.',
        ),
    )
    tls_key_file: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True), 'Key of forward.tls_cert_file; "" = none.'
        ),
    )
    creds_file: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'NATS credentials file (user JWT and nkey seed, nsc\'s .creds); "" = none.',
        ),
    )
    nkey_seed_file: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'NKey seed file, for a server that lists this user\'s public nkey; "" = none.',
        ),
    )
    raw: bool = field(
        default=False,
        metadata=about(
            Bool(),
            "Forward the messages themselves too: the scan workers hand each one to the"
            " forwarder's spill directory after its record is written.",
        ),
    )
    raw_max_bytes: int = field(
        default=MiB,
        metadata=about(
            Size(lo=KiB, hi=64 * MiB),
            "Largest raw message forwarded (the server's max_payload, 1 MiB by default,"
            " is the ceiling). A larger one is not handed on: its record is forwarded"
            " with the header Ringtrap-Raw: too-large.",
        ),
    )
    spill_dir: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'Spill directory of the raw messages waiting for the broker; "" ='
            ' "<overflow.dir>-forward". Keep it on tmpfs; it is purged with the overflow.',
            restart=True,
        ),
    )
    spill_max_bytes: int = field(
        default=256 * MiB,
        metadata=about(
            Size(lo=MiB),
            "Cap on the raw messages waiting; past it a raw message is not handed on"
            " (counted as forward_dropped). Records wait in the result files instead.",
        ),
    )


@dataclass(frozen=True, slots=True)
class CollectConfig:
    """[collect]: the fleet's hub, ``ringtrap collect``: JetStream into PostgreSQL."""

    servers: tuple[str, ...] = field(
        default=("nats://127.0.0.1:4222",),
        metadata=about(NatsServers(), "NATS servers of the fleet's stream.", restart=True),
    )
    stream: str = field(
        default="RINGTRAP",
        metadata=about(SubjectPrefix(single=True), "Stream the traps forward to.",
                       restart=True),
    )
    subject_prefix: str = field(
        default="ringtrap",
        metadata=about(SubjectPrefix(), "The traps' forward.subject_prefix: records are"
                       " read from <prefix>.*.record.", restart=True),
    )
    durable: str = field(
        default="ringtrap-collect",
        metadata=about(
            SubjectPrefix(single=True),
            "Name of the durable consumer: where the collector left off survives its"
            " restarts; two collectors with one name share the work.",
            restart=True,
        ),
    )
    database: str = field(
        default="dbname=ringtrap",
        metadata=about(
            Text(),
            "PostgreSQL connection string (libpq: \"host=/run/postgresql dbname=ringtrap\""
            " or a postgresql:// URL); the schema is created and migrated at start.",
            restart=True,
        ),
    )
    batch: int = field(
        default=500,
        metadata=about(
            Integer(lo=1, hi=10000),
            "Records loaded per transaction (one COPY); acknowledged after the commit.",
            restart=True,
        ),
    )
    batch_wait: float = field(
        default=1.0,
        metadata=about(Seconds(), "Longest wait for a batch to fill before it is loaded.",
                       restart=True),
    )
    ack_wait: float = field(
        default=60.0,
        metadata=about(
            Seconds(),
            "Seconds the broker waits for a batch's acknowledgement before it hands the"
            " records out again (after a collector died); longer than a batch's load."
            " Set when the consumer is created.",
            restart=True,
        ),
    )
    creds_file: Path | None = field(
        default=None,
        metadata=about(FilePath(optional=True), 'NATS credentials file of the hub; "" = none.',
                       restart=True),
    )
    raw_dir: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            "Maildir archive of the raw messages the traps forward, one Maildir per host and"
            ' UTC day (<dir>/<host>/<day>/new/<id>); "" = raw messages are not collected.',
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """[supervisor]: the process that owns all the others."""

    graceful_timeout: float = field(
        default=30.0,
        metadata=about(
            Seconds(),
            "Seconds a graceful stop (SIGTERM) waits for children before killing them.",
        ),
    )
    pidfile: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True), 'File holding the supervisor\'s pid; "" = none.', restart=True
        ),
    )
    log_file: Path | None = field(
        default=None,
        metadata=about(
            FilePath(optional=True),
            'Log file, reopened on SIGUSR1; "" = standard error (the journal under systemd).',
            restart=True,
        ),
    )
    log_level: str = field(
        default="info",
        metadata=about(
            Choice(("debug", "info", "warning", "error")), "Least severe level that is logged.",
            restart=True,
        ),
    )
    log_format: str = field(
        default="human",
        metadata=about(
            Choice(("human", "json")),
            'Log line format: "human" (one readable line) or "json" (one JSON object per'
            " line with the message id, verdict, score and event as keys);"
            " `ringtrap run --log-format` overrides it.",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the Prometheus endpoint."""

    listen: ListenAddress | None = field(
        default=None,
        metadata=about(
            Listen(),
            "Address of the Prometheus metrics endpoint the supervisor serves"
            ' (e.g. "127.0.0.1:9809"); "" = off.',
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """[service]: who the trap runs as."""

    user: str = field(
        default="",
        metadata=about(
            Account("user", lookup_user),
            "Started as root, the supervisor prepares its directories, ring and socket,"
            " then drops to this user before starting any child;"
            ' "" = keep running as the starting user.',
            restart=True,
        ),
    )
    group: str = field(
        default="",
        metadata=about(
            Account("group", lookup_group),
            'Group to run as with service.user; "" = that user\'s primary group.',
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: one attribute per TOML section."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    ring: RingConfig = field(default_factory=RingConfig)
    overflow: OverflowConfig = field(default_factory=OverflowConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    rspamd: RspamdConfig = field(default_factory=RspamdConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    prefilter: PrefilterConfig = field(default_factory=PrefilterConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)


def each_section() -> Iterator[tuple[str, type]]:
    """Every section as (name, its dataclass), in declaration order."""
    for f in fields(Config):
        assert isinstance(f.type, type)
        yield f.name, f.type


def each_key(section_cls: type) -> Iterator[tuple[str, Setting]]:
    """Every key of ``section_cls`` as (name, its Setting), in declaration order."""
    for f in fields(section_cls):
        yield f.name, f.metadata[SETTING_META]
