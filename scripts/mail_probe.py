"""A mail client for the Groupware harness, run inside a network namespace (`ip netns exec`):
`python mail_probe.py ACTION ADDRESS HOSTNAME CAFILE USER PASSWORD [SUBJECT]`.

It connects to ADDRESS (the firewall's public address) but speaks TLS to HOSTNAME (the Mail
appliance's name, e.g. m.acme.org) and verifies the server's certificate chain against CAFILE
(the VAN's CA) with hostname checking on, so a certificate the VAN's CA did not sign for that
name fails. Actions: `send` (SMTP on 25 with STARTTLS, from outside, to USER), `submit`
(submission on 587: STARTTLS, then login as USER), `imaps` and `pop3s` (list the messages and
print the subjects found). The result is one JSON object on stdout.
"""

from __future__ import annotations

import email
import hashlib
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import sys
from email.message import EmailMessage
from typing import Any


def _route(hostname: str, address: str) -> None:
    """Connections to `hostname` go to `address` (this process only; names stay for TLS)."""
    original = socket.create_connection

    def create_connection(target: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = target
        return original((address if host == hostname else host, port), *args, **kwargs)

    socket.create_connection = create_connection  # type: ignore[assignment]


def _message(user: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "bob@example.net"
    msg["To"] = user
    msg["Subject"] = subject
    msg.set_content(f"{subject}: sent from outside through the firewall.\n")
    return msg


def send(host: str, ctx: ssl.SSLContext, user: str, _pw: str, subject: str) -> dict[str, Any]:
    with smtplib.SMTP(host, 25, timeout=30) as smtp:
        smtp.ehlo("outside.example.net")
        smtp.starttls(context=ctx)
        smtp.ehlo("outside.example.net")
        refused = smtp.send_message(_message(user, subject))
    return {"refused": refused}


def submit(host: str, ctx: ssl.SSLContext, user: str, pw: str, subject: str) -> dict[str, Any]:
    with smtplib.SMTP(host, 587, timeout=30) as smtp:
        smtp.ehlo("outside.example.net")
        smtp.starttls(context=ctx)
        smtp.ehlo("outside.example.net")
        smtp.login(user, pw)
        refused = smtp.send_message(_message(user, subject))
    return {"refused": refused}


def imaps(host: str, ctx: ssl.SSLContext, user: str, pw: str, _subject: str) -> dict[str, Any]:
    imap = imaplib.IMAP4_SSL(host, 993, ssl_context=ctx, timeout=30)
    try:
        imap.login(user, pw)
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "ALL")
        subjects = []
        for num in data[0].split():
            _, parts = imap.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            raw = parts[0][1] if parts and isinstance(parts[0], tuple) else b""
            subjects.append(str(email.message_from_bytes(raw)["Subject"]))
        der = imap.sock.getpeercert(binary_form=True) or b""
        return {"subjects": subjects, "cert": hashlib.sha256(der).hexdigest()}
    finally:
        imap.logout()


def pop3s(host: str, ctx: ssl.SSLContext, user: str, pw: str, _subject: str) -> dict[str, Any]:
    pop = poplib.POP3_SSL(host, 995, context=ctx, timeout=30)
    try:
        pop.user(user)
        pop.pass_(pw)
        count, _ = pop.stat()
        subjects = []
        for num in range(1, count + 1):
            _, lines, _ = pop.top(num, 0)
            subjects.append(str(email.message_from_bytes(b"\r\n".join(lines))["Subject"]))
        return {"subjects": subjects}
    finally:
        pop.quit()


ACTIONS = {"send": send, "submit": submit, "imaps": imaps, "pop3s": pop3s}


def main(argv: list[str]) -> int:
    action, address, hostname, cafile, user, pw = argv[:6]
    subject = argv[6] if len(argv) > 6 else "hello"
    _route(hostname, address)
    ctx = ssl.create_default_context(cafile=cafile)  # hostname checked, chain to the VAN's CA
    try:
        result = ACTIONS[action](hostname, ctx, user, pw, subject)
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, poplib.error_proto) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result, default=str))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
