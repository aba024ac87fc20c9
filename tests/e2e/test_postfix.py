"""Real Postfix to a real trap, through the shipped snippets and nothing more.

Debian's Postfix runs as a private instance (``postfix_fixture``) on
127.0.0.1; mail for four trap domains goes out by every documented way:

    pipe.trap.test    pipe(8) running ``ringtrap submit``        (contrib/postfix/*-pipe)
    sh.trap.test      pipe(8) running ``ringtrap-deliver``       (the same, one word swapped)
    lmtp.trap.test    ``lmtp:unix:`` to ringtrap's LMTP socket   (contrib/postfix/*-lmtp)
    local.trap.test   an alias ``|ringtrap-deliver ...``         (contrib/postfix/*alias*)

The README shows these files (tests/test_docs.py holds it to them); the
private Postfix starts from Postfix's defaults, and the only settings that
make a trap domain accepted are the snippets' own.
The test sends over SMTP with smtplib, checks that every message is recorded
with the envelope Postfix knew and that Postfix logged it sent and bounced
nothing; then stops ringtrap, sends again, sees Postfix defer every route
(4.x.x, never a bounce), starts ringtrap again and sees the deferred mail
delivered.  The pipe user is ``nobody``, as an MTA's delivery user is never
root: it runs a copy of the package with Debian's /usr/bin/python3.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import tempfile
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from postfix_fixture import (
    SYSTEM_PYTHON,
    PostfixInstance,
    install_clients,
    main_cf,
    missing_reason,
    snippet,
)
from trap_fixture import Trap, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir() -> Iterator[Path]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (Debian's python3, for the pipe user) is not installed")
    # short, and traversable by the unprivileged users Postfix runs commands as
    path = Path(tempfile.mkdtemp(prefix="rt-pf-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def configure(pf: PostfixInstance, trap: Trap, bin_: Path) -> None:
    """The shipped snippets, with this test's paths, users and domains."""
    run = f"{trap.rundir}/"

    def local(text: str) -> str:
        return (text.replace("/run/ringtrap/", run)
                .replace("/usr/local/bin/", f"{bin_}/")
                .replace("user=ringtrap", "user=nobody")
                .replace("hash:/etc/postfix/", f"texthash:{pf.etc}/"))

    pipe_master = local(snippet("master.cf-pipe"))
    sh_master = (pipe_master.replace("ringtrap  unix", "ringtrapsh unix", 1)
                 .replace(f"argv={bin_}/ringtrap submit", f"argv={bin_}/ringtrap-deliver"))
    assert sh_master != pipe_master and "ringtrap-deliver" in sh_master
    lmtp_line = snippet("master.cf-lmtp")
    pf.master = re.sub(r"(?m)^lmtp .*\n", lmtp_line, pf.master) + pipe_master + sh_master

    def domain(text: str, name: str) -> str:
        return text.replace("trap.example.org", name)

    pipe_main = main_cf(local(snippet("main.cf-pipe")))
    sh_main = main_cf(domain(local(snippet("main.cf-pipe")), "sh.trap.test"))
    lmtp_main = main_cf(domain(local(snippet("main.cf-lmtp")), "lmtp.trap.test"))
    alias_main = main_cf(domain(local(snippet("main.cf-alias")), "local.trap.test"))
    assert pipe_main["transport_maps"] == lmtp_main["transport_maps"]
    relay = [domain(pipe_main["relay_domains"], "pipe.trap.test"), sh_main["relay_domains"],
             lmtp_main["relay_domains"]]
    for settings in (pipe_main, lmtp_main, alias_main):
        pf.main.update(settings)
    pf.main.update({k.replace("ringtrap_", "ringtrapsh_"): v for k, v in pipe_main.items()
                    if k.startswith("ringtrap_")})
    # three routes' domains where an operator has one: the snippet's line, once per route
    pf.main["relay_domains"] = ", ".join(relay)
    pf.main["alias_maps"] = alias_main["alias_maps"].replace("/etc/aliases", f"{pf.etc}/aliases")
    pipe_route = local(snippet("transport-pipe"))
    lmtp_route = local(snippet("transport-lmtp"))
    sh_route = domain(pipe_route, "sh.trap.test").replace("ringtrap:", "ringtrapsh:")
    pf.files["transport"] = (domain(pipe_route, "pipe.trap.test") + sh_route
                             + domain(lmtp_route, "lmtp.trap.test"))
    pf.files["aliases"] = local(snippet("aliases"))
    pf.alias_files.append("aliases")


def message(tag: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Spammer <spam@example.com>"
    m["To"] = "trap"
    m["Subject"] = f"trap test {tag}"
    m["Message-ID"] = f"<{tag}.{uuid.uuid4().hex}@example.com>"
    m.set_content(f"Buy now, {tag}.\n")
    return m


def send(port: int, sender: str, rcpts: list[str], msg: EmailMessage) -> str:
    """Deliver over SMTP; returns Postfix's queue id."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="sender.example", timeout=30) as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250, r
        code, text = s.data(msg.as_bytes())
        assert code == 250, text
    m = re.search(rb"queued as ([0-9A-F]+)", text)
    assert m is not None, text
    return m.group(1).decode()


def records_by_message_id(trap: Trap) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for r in trap.records():
        out.setdefault(str(r["message_id"]), []).append(r)
    return out


def test_postfix_delivers_by_pipe_lmtp_and_alias_and_defers_while_down(workdir: Path) -> None:
    settings = {"ingest": {"lmtp_socket": "", "socket_mode": 0o666, "idle_timeout": 30}}
    (workdir / "trap").mkdir()
    trap = Trap(workdir / "trap", settings)
    trap.settings["ingest"]["lmtp_socket"] = str(trap.rundir / "lmtp.sock")
    trap.write_config()
    trap.rundir.chmod(0o755)
    pf = PostfixInstance(workdir / "postfix")
    try:
        configure(pf, trap, install_clients(workdir))
        trap.start()
        pf.start()
        port = pf.port

        # -- up: every route delivers, with the envelope -----------------------------
        sent = {
            "pipe2": ("alice@example.org", ["a@pipe.trap.test", "b@pipe.trap.test"]),
            "null": ("", ["n@pipe.trap.test"]),
            "sh": ("carol@example.org", ["s@sh.trap.test"]),
            "lmtp": ("dave@example.org", ["x@lmtp.trap.test", "y@lmtp.trap.test"]),
            "alias": ("erin@example.org", ["trap@local.trap.test"]),
        }
        msgs = {tag: message(tag) for tag in sent}
        qids = {tag: send(port, s, r, msgs[tag]) for tag, (s, r) in sent.items()}
        # pipe(8) delivers one recipient at a time, LMTP both at once
        want = {"pipe2": 2, "null": 1, "sh": 1, "lmtp": 1, "alias": 1}

        def all_recorded() -> dict[str, list[dict[str, object]]] | None:
            got = records_by_message_id(trap)
            ok = all(len(got.get(msgs[t]["Message-ID"], [])) == n for t, n in want.items())
            return got if ok else None

        try:
            got = wait_until(all_recorded, 60, "every message recorded", step=0.2)
        except AssertionError:
            raise AssertionError(f"records: {records_by_message_id(trap)}\n{pf.log()}") from None

        def envelopes(tag: str) -> list[dict[str, object]]:
            rs = got[msgs[tag]["Message-ID"]]
            return sorted((r["envelope"] for r in rs), key=lambda e: str(e["recipients"]))

        for tag in ("pipe2", "null", "sh", "alias"):
            for env in envelopes(tag):
                # local(8) passes no queue id to an alias command
                assert env.get("queue_id") == (None if tag == "alias" else qids[tag]), (tag, env)
                assert env.get("client_address") == "127.0.0.1", (tag, env)
                assert env.get("client_helo") == "sender.example", (tag, env)
        assert [e["recipients"] for e in envelopes("pipe2")] == [["a@pipe.trap.test"],
                                                                 ["b@pipe.trap.test"]]
        assert [e["sender"] for e in envelopes("pipe2")] == ["alice@example.org"] * 2
        assert envelopes("null")[0]["sender"] == ""
        assert envelopes("sh")[0]["recipients"] == ["s@sh.trap.test"]
        assert envelopes("alias")[0]["sender"] == "erin@example.org"
        assert envelopes("alias")[0]["recipients"] == ["trap@local.trap.test"]
        [lmtp_env] = envelopes("lmtp")
        assert lmtp_env == {"sender": "dave@example.org",
                            "recipients": ["x@lmtp.trap.test", "y@lmtp.trap.test"],
                            "client_address": "127.0.0.1", "client_helo": "sender.example",
                            "queue_id": qids["lmtp"]}
        statuses = pf.statuses()
        for tag, qid in qids.items():
            assert statuses.get(qid) and set(statuses[qid]) == {"sent"}, (tag, pf.log())
        assert "delivered via ringtrap service" in pf.log()
        assert "delivered via ringtrapsh service" in pf.log()

        # -- down: Postfix defers, never bounces ---------------------------------------
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        down = {"pipe-down": ("f@example.org", ["d@pipe.trap.test"]),
                "sh-down": ("g@example.org", ["d@sh.trap.test"]),
                "lmtp-down": ("h@example.org", ["d@lmtp.trap.test"]),
                "alias-down": ("i@example.org", ["trap@local.trap.test"])}
        for tag in down:
            msgs[tag] = message(tag)
        down_qids = {tag: send(port, s, r, msgs[tag]) for tag, (s, r) in down.items()}

        def all_deferred() -> bool:
            st = pf.statuses()
            return all("deferred" in st.get(q, []) for q in down_qids.values())

        try:
            wait_until(all_deferred, 60, "Postfix to defer every route", step=0.2)
        except AssertionError:
            raise AssertionError(pf.log()) from None
        for tag, qid in down_qids.items():
            lines = [ln for ln in pf.log().splitlines() if f" {qid}: " in ln and "status=" in ln]
            assert lines and all(re.search(r"dsn=4\.\d+\.\d+", ln) for ln in lines), (tag, lines)

        # -- back: the deferred mail is delivered ----------------------------------------
        trap.start()
        pf.flush()
        want = {tag: 1 for tag in down}

        def deferred_recorded() -> bool:
            pf.flush()
            got = records_by_message_id(trap)
            return all(len(got.get(msgs[t]["Message-ID"], [])) == 1 for t in want)

        try:
            wait_until(deferred_recorded, 60, "the deferred mail to arrive", step=0.5)
        except AssertionError:
            raise AssertionError(pf.log()) from None
        statuses = pf.statuses()
        for tag, qid in down_qids.items():
            assert statuses[qid][-1] == "sent", (tag, statuses[qid])
        log = pf.log()
        assert "status=bounced" not in log and "non-delivery notification" not in log, log
    finally:
        pf.stop()
        trap.close()
