"""Throwaway certificates and TLS servers for tests: a CA made with ``openssl req -x509``,
server and client certificates it signs (``subjectAltName=IP:127.0.0.1``, so hostname
checks pass on the loopback address), a second CA that signed nothing the servers use
(the "wrong CA"), a ``redis-server`` that speaks TLS only, and the options that make a
private PostgreSQL speak TLS.

Elliptic-curve keys (P-256): making one takes milliseconds, so every test can have
certificates of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.servers import PrivatePostgres, PrivateRedis

#: What a server certificate is valid for: the loopback address the servers listen on.
LOOPBACK_SAN = "IP:127.0.0.1"
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


def make_ca(directory: Path, name: str) -> Pair:
    """A self-signed certificate authority."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        *_KEY,
        "-keyout",
        str(pair.key),
        "-out",
        str(pair.cert),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return pair


def make_cert(directory: Path, name: str, ca: Pair, *, client: bool = False) -> Pair:
    """A certificate signed by ``ca``: for a server on 127.0.0.1, or (``client``) for a
    client whose common name is ``name`` (PostgreSQL's ``cert`` auth maps it to a role)."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    _openssl(
        "req", "-new", *_KEY, "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={name}"
    )
    extensions = directory / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    san = "" if client else f"subjectAltName={LOOPBACK_SAN}\n"
    extensions.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        str(pair.cert),
        "-days",
        "2",
        "-extfile",
        str(extensions),
    )
    pair.key.chmod(0o600)
    return pair


@dataclass(frozen=True)
class Certificates:
    """Everything a TLS test needs: the CA the servers' certificates chain to, a
    server certificate, a client certificate (common name ``client_name``) and a CA
    that signed none of them."""

    ca: Pair
    server: Pair
    client: Pair
    wrong_ca: Pair
    client_name: str


def make_certificates(directory: Path, client_name: str = "fleettrace") -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "test-ca")
    return Certificates(
        ca=ca,
        server=make_cert(directory, "server", ca),
        client=make_cert(directory, client_name, ca, client=True),
        wrong_ca=make_ca(directory, "wrong-ca"),
        client_name=client_name,
    )


def _q(path: Path) -> str:
    return quote(str(path), safe="/")


class TlsRedis(PrivateRedis):
    """A redis-server that accepts TLS only (``--port 0``), on a free loopback port;
    with ``auth_clients`` it demands a client certificate signed by the test CA."""

    def __init__(
        self,
        certs: Certificates,
        *,
        auth_clients: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(appendonly=False)
        self.certs = certs
        self.auth_clients = auth_clients
        # Later arguments win: the plain port is switched off, TLS takes its number.
        self.extra_args = (
            *self.server_flags(),
            *extra_args,
        )

    def server_flags(self) -> tuple[str, ...]:
        """The TLS flags of the server, as docs/security.md gives them."""
        return (
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.certs.server.cert),
            "--tls-key-file",
            str(self.certs.server.key),
            "--tls-ca-cert-file",
            str(self.certs.ca.cert),
            "--tls-auth-clients",
            "yes" if self.auth_clients else "no",
        )

    def tls_url(
        self, *, ca: Path | None = None, client: Pair | None = None, userinfo: str = ""
    ) -> str:
        """A ``rediss://`` URL that verifies the server against ``ca`` (the test CA
        unless given) and, with ``client``, presents that certificate."""
        ca = ca if ca is not None else self.certs.ca.cert
        query = f"ssl_cert_reqs=required&ssl_ca_certs={_q(ca)}"
        if client is not None:
            query += f"&ssl_certfile={_q(client.cert)}&ssl_keyfile={_q(client.key)}"
        at = f"{userinfo}@" if userinfo else ""
        return f"rediss://{at}127.0.0.1:{self.port}/0?{query}"

    @property
    def url(self) -> str:
        return self.tls_url(client=self.certs.client if self.auth_clients else None)

    def admin(self) -> list[str]:
        """``redis-cli`` arguments that reach this server (for setup the client under
        test must not do itself)."""
        return [
            "redis-cli",
            "-p",
            str(self.port),
            "--tls",
            "--cacert",
            str(self.certs.ca.cert),
            "--cert",
            str(self.certs.client.cert),
            "--key",
            str(self.certs.client.key),
        ]


def install_pg_certificates(server: PrivatePostgres, certs: Certificates) -> dict[str, str]:
    """Copy the server certificate, its key (mode 0600) and the CA into a directory the
    postgres user owns, and return the ``-c`` options that turn TLS on with them."""
    directory = server.dir / "tls"
    directory.mkdir(exist_ok=True)
    files = {
        "server.crt": certs.server.cert,
        "server.key": certs.server.key,
        "ca.crt": certs.ca.cert,
    }
    for name, source in files.items():
        shutil.copyfile(source, directory / name)
    (directory / "server.key").chmod(0o600)
    if os.geteuid() == 0:
        for path in (directory, *(directory / name for name in files)):
            shutil.chown(path, "postgres", "postgres")
    return {
        "ssl": "on",
        "ssl_cert_file": str(directory / "server.crt"),
        "ssl_key_file": str(directory / "server.key"),
        "ssl_ca_file": str(directory / "ca.crt"),
    }


def pg_tls_url(
    server: PrivatePostgres,
    ca: Path,
    *,
    user: str = "postgres",
    password: str | None = None,
    dbname: str = "postgres",
    client: Pair | None = None,
) -> str:
    """A ``postgresql://`` URL with ``sslmode=verify-full`` against ``ca``."""
    secret = f":{quote(password, safe='')}" if password is not None else ""
    query = f"sslmode=verify-full&sslrootcert={_q(ca)}"
    if client is not None:
        query += f"&sslcert={_q(client.cert)}&sslkey={_q(client.key)}"
    return f"postgresql://{user}{secret}@127.0.0.1:{server.port}/{dbname}?{query}"
