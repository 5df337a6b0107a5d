//! Certificates and rustls configurations, for the server and the client library.
//!
//! One crypto provider everywhere: rustls' `ring`. TLS 1.3 only (QUIC requires it).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::secret_files::write_private;

/// File names the server uses in its data directory when no `--cert`/`--key` is given.
pub const SELF_SIGNED_CERT_FILE: &str = "server-cert.pem";
pub const SELF_SIGNED_KEY_FILE: &str = "server-key.pem";

/// The crypto provider used by every TLS configuration in Roost.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_chain = load_certificates(cert)?;
        let key_pem = fs::read(key).with_context(|| format!("reading key {}", key.display()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .with_context(|| format!("parsing key {}", key.display()))?
            .with_context(|| format!("no private key in {}", key.display()))?;
        Ok(Self { cert_chain, key })
    }

    /// Loads the self-signed certificate for `domain` from `data_dir`, creating it on first use.
    /// Returns the identity and the path of the certificate (which clients must trust).
    pub fn load_or_create_self_signed(
        data_dir: &Path,
        domain: &str,
    ) -> anyhow::Result<(Self, PathBuf)> {
        let cert_path = data_dir.join(SELF_SIGNED_CERT_FILE);
        let key_path = data_dir.join(SELF_SIGNED_KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            let key = KeyPair::generate().context("generating a key pair")?;
            let mut params = CertificateParams::new(vec![domain.to_owned()])
                .context("the domain is not a valid certificate name")?;
            params.distinguished_name = distinguished_name(domain);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params
                .self_signed(&key)
                .context("signing the certificate")?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_public(&cert_path, cert.pem().as_bytes())?;
        }
        Ok((Self::load(&cert_path, &key_path)?, cert_path))
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading certificate {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// The rustls server configuration: TLS 1.3, the given ALPNs, no client certificates (clients
/// authenticate inside the connection, see `transport::auth`).
pub fn server_config(
    identity: &TlsIdentity,
    alpns: &[&[u8]],
) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .context("the certificate does not match its key")?;
    config.alpn_protocols = alpns.iter().map(|alpn| alpn.to_vec()).collect();
    Ok(config)
}

/// The rustls client configuration: TLS 1.3, trusting exactly `roots`, offering `alpn`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .context("a trusted certificate is invalid")?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Paths written by [`issue_development_certificate`].
#[derive(Debug)]
pub struct DevelopmentCertificate {
    pub ca_cert: PathBuf,
    pub ca_created: bool,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `out/ca.pem` + `out/ca.key` (a development CA, created when absent and reused when
/// present, so several domains share one CA) and `out/DOMAIN.pem` + `out/DOMAIN.key`: a
/// certificate for `domain` signed by that CA, for use as a server and a federation client.
pub fn issue_development_certificate(
    out: &Path,
    domain: &str,
) -> anyhow::Result<DevelopmentCertificate> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca_cert = out.join("ca.pem");
    let ca_key_path = out.join("ca.key");
    let ca_params = development_ca_params();
    let ca_created = !ca_key_path.exists();
    let ca_key = if ca_created {
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = ca_params.self_signed(&key).context("signing the CA")?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        write_public(&ca_cert, cert.pem().as_bytes())?;
        key
    } else {
        let pem = fs::read_to_string(&ca_key_path)
            .with_context(|| format!("reading {}", ca_key_path.display()))?;
        KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", ca_key_path.display()))?
    };
    // The CA's name, key usages and key identifier are fixed, so the issuer is rebuilt exactly
    // from its parameters and key without parsing the certificate.
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().context("generating the certificate key")?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .context("the domain is not a valid certificate name")?;
    params.distinguished_name = distinguished_name(domain);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    let cert_path = out.join(format!("{domain}.pem"));
    let key_path = out.join(format!("{domain}.key"));
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    Ok(DevelopmentCertificate {
        ca_cert,
        ca_created,
        cert: cert_path,
        key: key_path,
    })
}

fn development_ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("Roost development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
