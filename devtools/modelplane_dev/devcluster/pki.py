"""Certificates for the dev cluster: a CA, the API server's serving certificate with loopback
SANs, client certificates for the admin and the control-plane components, and the ServiceAccount
signing key pair. Written once per run directory; nothing here ever leaves the machine.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Valid long enough for a developer's week; a run directory is not meant to live longer.
VALIDITY = datetime.timedelta(days=30)

#: The first address of the Service CIDR (the `kubernetes` Service); only ever a name in a SAN.
SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate subject: CN is the user, O the groups."""

    name: str  #: file stem
    common_name: str
    organization: str | None = None


CLIENTS = (
    ClientIdentity("admin", "kubernetes-admin", "system:masters"),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("kwok", "system:kwok-controller", "system:masters"),
)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _sign(subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate | None,
          ca_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          usages: list[x509.ObjectIdentifier] | None = None,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(ca_cert.subject if ca_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{pki / 'ca.key'} is not the EC key write_pki makes")
    return cert, key


def issue_serving_cert(pki: Path, out_dir: Path, common_name: str) -> None:
    """A loopback serving certificate (``tls.crt``/``tls.key`` in ``out_dir``, the names
    controller-runtime's webhook server reads) signed by the cluster's CA in ``pki``, for an
    in-cluster component that runs as a process on this machine (the API server calls it by URL)."""
    ca_cert, ca_key = _load_ca(pki)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    _write_key(out_dir / "tls.key", key)
    _write_cert(out_dir / "tls.crt", _sign(_name(common_name), key, ca_cert, ca_key,
                                           usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans))


def issue_client_cert(pki: Path, identity: ClientIdentity) -> None:
    """A client certificate ``<name>.crt``/``.key`` in ``pki``, signed by the cluster's CA."""
    ca_cert, ca_key = _load_ca(pki)
    key = _key()
    _write_key(pki / f"{identity.name}.key", key)
    _write_cert(pki / f"{identity.name}.crt",
                _sign(_name(identity.common_name, identity.organization), key, ca_cert, ca_key,
                      usages=[ExtendedKeyUsageOID.CLIENT_AUTH]))


def write_pki(pki: Path) -> None:
    """Create every key and certificate the cluster needs under ``pki``."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _sign(_name("modelplane-devcluster-ca"), ca_key, None, ca_key, ca=True)
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca_cert)

    sans: list[x509.GeneralName] = [
        x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                  "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    server_key = _key()
    _write_key(pki / "apiserver.key", server_key)
    _write_cert(pki / "apiserver.crt", _sign(_name("kube-apiserver"), server_key, ca_cert, ca_key,
                                             usages=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans))

    for client in CLIENTS:
        key = _key()
        _write_key(pki / f"{client.name}.key", key)
        _write_cert(pki / f"{client.name}.crt",
                    _sign(_name(client.common_name, client.organization), key, ca_cert, ca_key,
                          usages=[ExtendedKeyUsageOID.CLIENT_AUTH]))

    sa_key = _key()
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
