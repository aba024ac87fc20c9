"""The bounded MIME walk (ringtrap.scan.mime) on real, built and hostile messages."""

from __future__ import annotations

import base64

import mailbuild as mb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringtrap.scan import mime


def test_sample_messages_are_single_text_parts() -> None:
    for path, subject in ((mb.SPAM, "Test spam mail (GTUBE)"),
                          (mb.HAM, "TBTF ping for 2001-04-20: Reviving")):
        if not path.exists():
            pytest.skip("Debian's spamassassin samples are not installed")
        msg = mime.parse(path.read_bytes())
        assert msg.unparseable is None and msg.defects == []
        assert [p.content_type for p in msg.parts] == ["text/plain"]
        assert msg.get("subject") == subject
        assert b"GTUBE" in msg.parts[0].decoded(1 << 20) or path == mb.HAM


def test_multipart_parts_names_and_encodings() -> None:
    data = mb.multipart([
        mb.text_part("plain text\n"),
        "Content-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding:"
        " quoted-printable\n\n<p>caf=E9</p>\n",
        "Content-Type: application/pdf; name*=utf-8''r%C3%A9sum%C3%A9.pdf\n"
        "Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(b"%PDF-1.4 x").decode(),
        'Content-Type: image/png\nContent-Disposition: attachment; filename="=?utf-8?q?'
        'b=C3=A9b=C3=A9.png?="\n\nPNG',
    ])
    msg = mime.parse(data)
    assert msg.unparseable is None and msg.defects == []
    types = [p.content_type for p in msg.parts]
    assert types == ["multipart/mixed", "text/plain", "text/html", "application/pdf",
                     "image/png"]
    assert msg.parts[1].text(100) == "plain text\r\n"
    assert msg.parts[2].text(100) == "<p>café</p>\r\n"
    assert msg.parts[3].filename == "résumé.pdf"
    assert msg.parts[3].decoded(100) == b"%PDF-1.4 x"
    assert msg.parts[4].filename == "bébé.png"
    assert [p.is_attachment for p in msg.parts] == [False, False, False, True, True]


def test_attached_message_is_walked() -> None:
    inner = mb.plain("inner body\n", subject="inner").decode()
    msg = mime.parse(mb.multipart([mb.text_part("outer\n"),
                                   "Content-Type: message/rfc822\n\n" + inner]))
    assert [p.content_type for p in msg.parts] == [
        "multipart/mixed", "text/plain", "message/rfc822", "text/plain"]
    assert msg.parts[3].depth == 2 and msg.parts[3].text(100).startswith("inner body")


def test_broken_mime_is_read_as_far_as_it_goes() -> None:
    # no close delimiter, a part without headers, a boundary prefix that is no delimiter
    data = mb.crlf(mb.headers() + 'Content-Type: multipart/mixed; boundary="b1"\n\n'
                   "--b1\n\nheaderless part\n--b10 not a delimiter\n--b1\n"
                   "Content-Transfer-Encoding: base64\n\n!!!not*base64@@\n")
    msg = mime.parse(data)
    assert msg.unparseable is None
    assert [p.content_type for p in msg.parts] == ["multipart/mixed", "text/plain", "text/plain"]
    assert msg.parts[1].text(1000) == "headerless part\r\n--b10 not a delimiter"
    assert msg.parts[2].decoded(100) == base64.b64decode(b"notbase6")
    assert any("not closed" in d for d in msg.defects)


def test_multipart_without_boundary_or_delimiters_has_one_part() -> None:
    for ctype in ("multipart/mixed", 'multipart/mixed; boundary="nowhere"'):
        msg = mime.parse(mb.crlf(mb.headers() + f"Content-Type: {ctype}\n\nbody\n"))
        assert len(msg.parts) == 1 and msg.unparseable is None and msg.defects


def test_absurd_nesting_is_unparseable_and_bounded() -> None:
    levels = 5000
    data = b"Subject: deep\r\n" + b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(levels))
    msg = mime.parse(data)
    assert msg.unparseable == f"MIME nested deeper than {mime.MAX_DEPTH} levels"
    assert len(msg.parts) == mime.MAX_DEPTH + 1
    assert len(msg.defects) <= mime.MAX_DEFECTS


def test_part_count_is_capped() -> None:
    data = mb.multipart([mb.text_part(f"part {i}\n") for i in range(mime.MAX_PARTS + 50)])
    msg = mime.parse(data)
    assert len(msg.parts) == mime.MAX_PARTS
    assert msg.unparseable is None
    assert any("more than" in d for d in msg.defects)


def test_huge_header_count_is_capped() -> None:
    data = b"".join(b"X-H%d: v\r\n" % i for i in range(50_000)) + b"\r\nbody"
    msg = mime.parse(data)
    assert len(msg.headers) == mime.MAX_HEADERS
    assert msg.defects == [f"more than {mime.MAX_HEADERS} header fields; the rest read as body"]


@pytest.mark.parametrize("data", [b"", b"\x00\x01\x02garbage", b"just a body line\n",
                                  b"\r\n\r\nbody after a blank line", bytes(range(256)) * 100])
def test_what_has_no_header_is_unparseable(data: bytes) -> None:
    msg = mime.parse(data)
    assert msg.unparseable in ("empty message", "no header fields")
    assert msg.parts == []


def test_only_the_walk_window_is_read() -> None:
    big = mb.multipart([mb.text_part("x" * 100), mb.text_part("y" * (mime.MAX_PARSE_BYTES + 10))])
    msg = mime.parse(big)
    assert f"walked only the first {mime.MAX_PARSE_BYTES} bytes" in msg.defects
    assert msg.parts[-1].body.nbytes < mime.MAX_PARSE_BYTES


def test_decode_body_respects_the_limit() -> None:
    raw = base64.encodebytes(b"a" * 10_000)
    assert mime.decode_body(raw, "base64", 100) == b"a" * 100
    assert mime.decode_body(b"=41" * 1000, "quoted-printable", 10) == b"A" * 10
    assert mime.decode_body(b"plain", "x-unknown", 3) == b"pla"


def test_params_quoted_continued_and_broken() -> None:
    main, params = mime.parse_params(
        'multipart/mixed; boundary="a \\"q\\" b"; name*0*=us-ascii\'en\'x%20y; name*1=z;'
        ' broken; =x; charset=UTF-8')
    assert main == "multipart/mixed"
    assert params == {"boundary": 'a "q" b', "name": "x yz", "charset": "UTF-8"}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=8192))
def test_arbitrary_bytes_never_crash_the_walk(data: bytes) -> None:
    msg = mime.parse(data)
    assert len(msg.parts) <= mime.MAX_PARTS
    for part in msg.parts:
        assert isinstance(part.decoded(1024), bytes)
        assert isinstance(part.text(1024), str)


_piece = st.sampled_from([
    b"--b\r\n", b"--b--\r\n", b"--c\r\n", b"\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/alternative; boundary=c\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''%ff%fe; filename*1=x\r\n",
    b"text =C3=A9 =ZZ\r\n", b"QUJD\r\n", b"\x00\xff\r\n", b"Subject: =?utf-8?b?w6k=?=\r\n",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_piece, max_size=60))
def test_mime_shaped_garbage_never_crashes(pieces: list[bytes]) -> None:
    msg = mime.parse(b"From: a@b\r\n" + b"".join(pieces))
    assert msg.unparseable is None or msg.unparseable.startswith("MIME nested")
    for part in msg.parts:
        part.text(4096)
