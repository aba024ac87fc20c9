"""spamd over TLS (``--listen=ssl:``) with a CA of the test's own: the client verifies it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from spamd_fixture import SpamdProcess, free_tcp_port, spamd_missing_reason

from ringtrap.scan.scanner import ScanConnectionError, ScanError
from ringtrap.scan.spamd import SpamdClient

GTUBE = (b"Subject: tls\r\n\r\n"
         b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}", cwd=d)


@pytest.fixture(scope="module")
def tls_spamd() -> Iterator[tuple[SpamdProcess, int, Path]]:
    reason = spamd_missing_reason() or (None if shutil.which("openssl") else "no openssl")
    if reason:
        pytest.skip(reason)
    # readable by the user spamd's children run as, unlike pytest's private tmp
    d = Path(tempfile.mkdtemp(prefix="ringtrap-tls-"))
    d.chmod(0o755)
    try:
        make_ca(d, "ca")
        make_ca(d, "other-ca")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
        (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
                cwd=d)
        for f in d.iterdir():
            f.chmod(0o644)
        port = free_tcp_port()
        with SpamdProcess(extra_args=(f"--listen=ssl:127.0.0.1:{port}",
                                      f"--server-key={d / 'server.key'}",
                                      f"--server-cert={d / 'server.pem'}")) as proc:
            client = SpamdClient(f"tls:127.0.0.1:{port}", tls_ca=str(d / "ca.pem"))
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.ping(timeout=2)
                    break
                except ScanError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield proc, port, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_spamd_with_a_certificate_from_the_configured_ca_scans(
        tls_spamd: tuple[SpamdProcess, int, Path]) -> None:
    _, port, d = tls_spamd
    for host in ("127.0.0.1", "localhost"):  # the name checked is the address's host
        client = SpamdClient(f"tls:{host}:{port}", tls_ca=str(d / "ca.pem"))
        r = client.scan(GTUBE)
        assert r.spam and r.score >= 500 and r.host == f"tls:{host}:{port}"
        client.ping(timeout=5)


@pytest.mark.parametrize("ca", ["other-ca.pem", None])
def test_a_certificate_the_client_cannot_trust_is_refused(
        tls_spamd: tuple[SpamdProcess, int, Path], ca: str | None) -> None:
    _, port, d = tls_spamd
    client = SpamdClient(f"tls:127.0.0.1:{port}", tls_ca=None if ca is None else str(d / ca))
    with pytest.raises(ScanConnectionError, match="certificate not trusted") as info:
        client.scan(GTUBE)
    assert info.value.retryable  # a pool fails over to a host it can trust
