"""A short-lived test CA made at run time with the OpenSSL command line, so a
cluster can run under mTLS (docs/security.md, "Running a topology under mTLS").

Every node of a cluster gets a certificate from the same root (the seed's
"every node trusts the same short-lived root"): EC P-256, valid for one day,
SANs ``DNS:localhost``, ``IP:127.0.0.1`` and ``URI:spiffe://omnirelay/<name>``
(the principal the node's peers bind). The harness itself gets one too
(``spiffe://omnirelay/harness``) for readiness probes, admin calls and test
clients. Keys are written mode 0600 under ``<artifacts>/pki/``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Dict, Tuple

CURVE = "prime256v1"
SPIFFE = "spiffe://omnirelay/"


class PkiError(RuntimeError):
    """The openssl command line failed (its stderr is in the message)."""


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("the openssl command is not installed (Debian package 'openssl')")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise PkiError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


class TestCa:
    """One CA and the leaf certificates it issued, as files."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, days: int = 1, name: str = "omnirelay test CA") -> None:
        self.dir = Path(directory)
        self.days = days
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.ca_cert = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self.leaves: Dict[str, Tuple[Path, Path]] = {}
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-nodes",
                 "-keyout", str(self.ca_key), "-out", str(self.ca_cert), "-days", str(days),
                 "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        os.chmod(self.ca_key, 0o600)

    def issue(self, name: str) -> Tuple[Path, Path]:
        """(cert, key) for ``name``, issued once and then reused."""
        if name in self.leaves:
            return self.leaves[name]
        cert, key, csr = self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n"
                       f"subjectAltName=DNS:localhost,IP:127.0.0.1,URI:{SPIFFE}{name}\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=self.dir)
        os.chmod(key, 0o600)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", str(self.days), "-sha256",
                 "-extfile", str(ext), cwd=self.dir)
        csr.unlink()
        ext.unlink()
        self.leaves[name] = (cert, key)
        return cert, key

    # -- clients --------------------------------------------------------------------
    def client_ssl_context(self, name: str = "harness") -> ssl.SSLContext:
        """An HTTPS client context presenting ``name``'s certificate."""
        cert, key = self.issue(name)
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(cert), str(key))
        return context

    def grpc_credentials(self, name: str = "harness"):
        """``grpc.ssl_channel_credentials`` presenting ``name``'s certificate."""
        import grpc

        cert, key = self.issue(name)
        return grpc.ssl_channel_credentials(root_certificates=self.ca_cert.read_bytes(),
                                            private_key=key.read_bytes(),
                                            certificate_chain=cert.read_bytes())

    def benchmark_options(self, name: str = "harness") -> Dict[str, str]:
        """``run_benchmark`` keyword options presenting ``name``'s certificate
        (give it an ``https://`` address)."""
        cert, key = self.issue(name)
        return {"tls_ca_file": str(self.ca_cert), "tls_cert_file": str(cert),
                "tls_key_file": str(key)}

    def node_settings(self, name: str, client_certificate: str = "require") -> Dict[str, str]:
        """``omniRelay.tls`` keys for node ``name`` (as ``--set`` pairs)."""
        cert, key = self.issue(name)
        return {"tls.certFile": str(cert), "tls.keyFile": str(key), "tls.caFile": str(self.ca_cert),
                "tls.clientCertificate": client_certificate}
