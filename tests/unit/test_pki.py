from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localkube import pki


def test_serving_certificate_is_signed_by_the_ca_and_names_its_hosts(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path)
    pair = pki.issue(ca, tmp_path, "server", "kube-apiserver", hosts=("127.0.0.1", "localhost"))
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages


def test_client_certificate_carries_user_and_groups(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path)
    pair = pki.issue(ca, tmp_path, "admin", "me", orgs=("system:masters",))
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "me"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert oct(pair.key.stat().st_mode & 0o777) == "0o600"


def test_kubeconfig_embeds_everything(tmp_path: Path) -> None:
    ca = pki.make_ca(tmp_path)
    admin = pki.issue(ca, tmp_path, "admin", "me")
    path = pki.write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", ca, admin)
    cfg = yaml.safe_load(path.read_text())
    assert cfg["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert cfg["users"][0]["user"]["client-key-data"]
    assert cfg["current-context"] == "localkube"


def test_signing_key_pair_matches(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pair = pki.make_signing_key(tmp_path)
    private = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pair.cert.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
