"""Extractors (ringtrap.scan.extract): relay, addresses, URLs, domains, attachments,
fingerprints."""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
import os
from unittest import mock

import mailbuild as mb
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ringtrap.scan import extract, mime


def test_relay_of_the_nonspam_sample_is_its_first_external_hop() -> None:
    if not mb.HAM.exists():
        pytest.skip("Debian's spamassassin samples are not installed")
    msg = mime.parse(mb.HAM.read_bytes())
    assert extract.first_untrusted_relay(msg) == ("199.172.62.20", "europe.std.com")
    # with the trap's own relay trusted, the hop before it is the relay
    trusted = [ipaddress.ip_network("199.172.62.0/24")]
    # (that client greeted with an address literal)
    assert extract.first_untrusted_relay(msg, trusted) == ("208.192.102.193", "[208.192.102.193]")


def test_received_forms_of_postfix_exim_and_local_pickup() -> None:
    data = mb.crlf(
        "Received: by mx.example.org (Postfix, from userid 0) id 1\n"
        "Received: from localhost (localhost [127.0.0.1]) by mx.example.org\n"
        "Received: from [203.0.113.9] (helo=spammer.example) by mx.example.org with esmtp\n"
        "Received: from other.example (other.example [198.51.100.1]) by spammer.example\n"
        "Subject: x\n\nbody\n")
    msg = mime.parse(data)
    assert extract.first_untrusted_relay(msg) == ("203.0.113.9", "spammer.example")


def test_received_with_ipv6_and_no_ip() -> None:
    data = mb.crlf("Received: from helo.example (host [IPv6:2001:db8::1]) by mx\n"
                   "Subject: x\n\nbody\n")
    assert extract.first_untrusted_relay(mime.parse(data)) == ("2001:db8::1", "helo.example")
    assert extract.first_untrusted_relay(mime.parse(mb.plain())) == (None, None)


@pytest.mark.parametrize(("value", "domain"), [
    ("Sender <Sender@Example.NET>", "example.net"),
    ("plain@example.org", "example.org"),
    ('"a@b" <real@example.com>', "example.com"),
    ("<>", None),
    ("no address here", None),
    (None, None),
])
def test_address_domain(value: str | None, domain: str | None) -> None:
    assert extract.address_domain(value) == domain


@pytest.mark.parametrize(("host", "domain"), [
    ("www.example.co.uk", "example.co.uk"),
    ("a.b.example.com", "example.com"),
    ("spammer.blogspot.com", "spammer.blogspot.com"),  # the private section counts
    ("co.uk", None),
    ("localhost", None),
    ("192.0.2.1", "192.0.2.1"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("bad_host!.com", None),
])
def test_registered_domain(host: str, domain: str | None) -> None:
    assert extract.registered_domain(host) == domain


def test_urls_from_text_and_html_deduplicated() -> None:
    data = mb.multipart([
        mb.text_part("See http://www.shop.example.com/a?b=1. Or www.other.example.org!\n"
                     "Again: http://www.shop.example.com/a?b=1\n"),
        mb.text_part('<a href="https://click.example.net/r?u=1&amp;v=2">here</a>'
                     '<img src="http://img.example.net/p.gif">', "text/html"),
    ], subtype="alternative")
    msg = mime.parse(data)
    found = extract.urls(t for _, t in extract.text_parts(msg))
    assert found == ["http://www.shop.example.com/a?b=1", "http://www.other.example.org",
                     "https://click.example.net/r?u=1&v=2", "http://img.example.net/p.gif"]
    assert extract.url_domains(found) == ["example.com", "example.org", "example.net"]


def test_urls_and_domains_are_capped() -> None:
    text = " ".join(f"http://h{i}.d{i}.example/" for i in range(1000))
    found = extract.urls([text])
    assert len(found) == extract.MAX_URLS
    assert len(extract.url_domains(found)) == extract.MAX_DOMAINS


def test_attachments_are_decoded_and_hashed() -> None:
    data = mb.with_attachment("report.pdf", b"%PDF-1.4 hello", "application/pdf")
    files = extract.attachments(mime.parse(data))
    assert [f.to_dict() for f in files] == [{
        "name": "report.pdf", "type": "application/pdf", "size": 14,
        "sha256": hashlib.sha256(b"%PDF-1.4 hello").hexdigest()}]
    assert files[0].executable is None


def test_body_hash_is_of_the_raw_body() -> None:
    data = mb.plain("exact body\n")
    body = data.split(b"\r\n\r\n", 1)[1]
    assert extract.body_sha256(mime.parse(data)) == hashlib.sha256(body).hexdigest()


def fp(data: bytes) -> str | None:
    msg = mime.parse(data)
    return extract.fingerprint(extract.text_parts(msg), extract.attachments(msg))


def test_campaign_copies_share_a_fingerprint_and_campaigns_differ() -> None:
    copies = {fp(mb.campaign_copy(n)) for n in range(50)}
    assert len(copies) == 1 and None not in copies
    assert fp(mb.campaign_copy(0, campaign=1)) not in copies
    # the body hashes of the same copies all differ
    assert len({extract.body_sha256(mime.parse(mb.campaign_copy(n))) for n in range(50)}) == 50


def test_html_and_plain_versions_normalise_alike() -> None:
    assert extract.normalize("<p>Hello <b>World</b> 2024!</p>", is_html=True) == "hello world"
    assert extract.normalize("HELLO, world... 12345 customer42 a1b2c3d4e5f6 " + "x" * 30) == \
        "hello world"


def test_too_little_text_gives_no_fingerprint() -> None:
    assert fp(mb.plain("hi\n")) is None
    assert fp(mb.with_attachment("a.bin", b"\x01\x02")) is not None


# -- attachments past the walked window (the first 4 MiB) ----------------------------

BIG = 15 * 1024 * 1024


def _offline_record(message: bytes) -> dict[str, object]:
    from ringtrap.scan.processing import Processor

    return Processor(scanner=None, scan_limit_bytes=500 * 1024).process(
        "0640c3f1a2b3c-0004d2", message, 0.0, 0).to_dict()


def test_a_15_mib_attachment_is_hashed_whole() -> None:
    # before: recorded as 3,064,803 bytes with the hash of that prefix
    data = os.urandom(BIG)
    message = mb.multipart([mb.text_part("See the file.\n"), mb.attachment("big.bin", data),
                            mb.text_part("A part after it.\n")])
    assert len(message) > mime.MAX_PARSE_BYTES
    rec = _offline_record(message)
    assert rec["attachments"] == [{"name": "big.bin", "type": "application/octet-stream",
                                   "size": BIG, "sha256": hashlib.sha256(data).hexdigest()}]


def test_a_large_unencoded_body_is_hashed_whole() -> None:
    data = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    message = mb.crlf(mb.headers() + "Content-Type: application/octet-stream\n"
                      "Content-Transfer-Encoding: binary\n\n") + data
    (found,) = extract.attachments(mime.parse(message))
    assert (found.size, found.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def _qp_message(encoded: bytes) -> bytes:
    head = mb.crlf(mb.headers() + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"'
                   '\n\n--b\nContent-Type: text/plain\n\nhi\n--b\nContent-Type: text/csv; '
                   'name="a.csv"\nContent-Transfer-Encoding: quoted-printable\n\n')
    return head + encoded + b"\r\n--b--\r\n"


def test_a_large_quoted_printable_attachment_is_hashed_whole() -> None:
    encoded = b"caf=C3=A9;price=3D12;a long value that goes on and on=\r\n and on\r\n" * 100_000
    (found,) = extract.attachments(mime.parse(_qp_message(encoded)))
    decoded = binascii.a2b_qp(encoded)
    assert (found.size, found.sha256) == (len(decoded), hashlib.sha256(decoded).hexdigest())


def test_a_file_that_cannot_be_read_whole_is_marked_truncated() -> None:
    # one quoted-printable line longer than a streamed slice cannot be cut
    (found,) = extract.attachments(mime.parse(_qp_message(b"=41" * (2 * 1024 * 1024))))
    assert found.to_dict() == {"name": "a.csv", "type": "text/csv", "truncated": True}
    assert extract.fingerprint([], [found])  # still fingerprinted, by its being there


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_streamed_base64_decodes_as_the_whole(raw: bytes, chunk: int) -> None:
    junk = raw.replace(b"\x00", b"QUJD").replace(b"\x01", b"=\r\n")
    with mock.patch.object(mime, "STREAM_CHUNK", chunk):
        assert b"".join(mime._iter_base64(memoryview(junk))) == mime._unbase64(junk)


QP_PIECES = [b"a", b"=", b"==", b"=41", b"=4", b"=\r\n", b"=\n", b"=\r", b"\r\n", b"\n", b"\r",
             b" ", b"\t", b"=zz", b"_", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(QP_PIECES), max_size=80), st.integers(4, 40))
def test_streamed_quoted_printable_decodes_as_the_whole(pieces: list[bytes], chunk: int) -> None:
    encoded = b"".join(pieces)
    with mock.patch.object(mime, "STREAM_CHUNK", chunk):
        streamed = mime._iter_qp(memoryview(encoded))
    assume(streamed is not None)
    assert b"".join(streamed) == binascii.a2b_qp(encoded)
