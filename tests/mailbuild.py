"""Messages the tests build: delivery reports, auto-replies, malware, broken MIME, campaigns.

Each builder returns the raw bytes an MTA would hand over, with CRLF line
ends as on the wire.  Nothing here is a fixture: tests call the builders.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

EXAMPLES = Path("/usr/share/doc/spamassassin/examples")
SPAM = EXAMPLES / "sample-spam.txt"
HAM = EXAMPLES / "sample-nonspam.txt"

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# The start of a Windows PE file: the DOS header ("MZ"), e_lfanew at 0x3c
# pointing at the "PE\0\0" signature.
PE_HEAD = b"MZ" + b"\x90\x00" * 29 + b"\x40\x00\x00\x00" + b"\x00" * 0 + b"PE\x00\x00" + \
    b"\x00" * 64


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def headers(subject: str = "Hello", sender: str = "Sender <sender@example.com>",
            extra: str = "") -> str:
    return (f"From: {sender}\nTo: trap@example.org\nSubject: {subject}\n"
            f"Message-ID: <{abs(hash(subject + extra))}@example.com>\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0000\n{extra}")


def plain(body: str = "Buy cheap watches today, best prices in town.\n", **kw: str) -> bytes:
    return crlf(headers(**kw) + "Content-Type: text/plain; charset=utf-8\n\n" + body)


def multipart(parts: list[str], subtype: str = "mixed", boundary: str = "=_b1",
              params: str = "", **kw: str) -> bytes:
    body = "".join(f"--{boundary}\n{p}\n" for p in parts) + f"--{boundary}--\n"
    return crlf(headers(**kw) + "MIME-Version: 1.0\n"
                f'Content-Type: multipart/{subtype}; boundary="{boundary}"{params}\n\n'
                "This is a multi-part message in MIME format.\n\n" + body)


def attachment(name: str, data: bytes, ctype: str = "application/octet-stream") -> str:
    b64 = base64.encodebytes(data).decode("ascii")
    return (f'Content-Type: {ctype}; name="{name}"\nContent-Transfer-Encoding: base64\n'
            f'Content-Disposition: attachment; filename="{name}"\n\n{b64}')


def text_part(text: str, ctype: str = "text/plain") -> str:
    return f"Content-Type: {ctype}; charset=utf-8\n\n{text}"


def dsn(envelope_from_header: bool = True) -> bytes:
    """A Postfix-style delivery status notification (RFC 3464)."""
    sender = "MAILER-DAEMON@mx.example.net (Mail Delivery System)" if envelope_from_header \
        else "Mail Delivery System <mailer@mx.example.net>"
    return multipart(
        [text_part("This is the mail system at host mx.example.net.\n\n"
                   "I'm sorry to have to inform you that your message could not\n"
                   "be delivered to one or more recipients.\n"),
         "Content-Description: Delivery report\nContent-Type: message/delivery-status\n\n"
         "Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: rfc822; nobody@example.net\n"
         "Action: failed\nStatus: 5.1.1\n",
         "Content-Type: message/rfc822\n\n" + plain().decode()],
        subtype="report", params="; report-type=delivery-status",
        subject="Undelivered Mail Returned to Sender", sender=sender)


def autoreply(extra: str = "Auto-Submitted: auto-replied\n",
              subject: str = "Re: your message") -> bytes:
    return plain("I am away until Monday and will answer your mail then.\n",
                 subject=subject, extra=extra)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def with_attachment(name: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    return multipart([text_part("Please see the attached invoice.\n"),
                      attachment(name, data, ctype)], subject="Invoice")


def campaign_copy(n: int, campaign: int = 0) -> bytes:
    """Copy ``n`` of a campaign: same text, a different name, number and tracking link."""
    body = (f"Dear customer{n},\n\nYour account number {100000 + n} has been selected for"
            f" campaign {'ABCDEFGHIJ'[campaign % 10]} and a special offer on our new products.\n"
            f"Visit http://offers{campaign}.example.com/track?id={n:08x}x{n * 7919:x}"
            " to claim it before Friday.\n\nBest regards,\nThe Team\n")
    return plain(body, subject=f"Offer {n}", sender=f"Offers <o{n}@example.com>")
