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

/// Whether the certificate `leaf` is valid for the DNS name `domain` (its subject alternative
/// names), as clients and peers will check it.
pub fn certificate_names(leaf: &CertificateDer<'_>, domain: &str) -> bool {
    let (Ok(parsed), Ok(name)) = (
        rustls::server::ParsedCertificate::try_from(leaf),
        rustls::pki_types::ServerName::try_from(domain.to_owned()),
    ) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
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

/// The rustls server configuration: TLS 1.3, the given ALPNs. Devices present no certificate
/// (they authenticate inside the connection, see `transport::auth`); with `peers`, peer
/// homeservers present theirs and are verified against it.
pub fn server_config(
    identity: &TlsIdentity,
    alpns: &[&[u8]],
    peers: Option<&PeerTrust>,
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match peers {
        Some(trust) => builder.with_client_cert_verifier(peer_client_verifier(trust)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .context("the certificate does not match its key")?;
    config.alpn_protocols = alpns.iter().map(|alpn| alpn.to_vec()).collect();
    Ok(config)
}

/// The rustls client configuration: TLS 1.3, trusting exactly `roots`, offering `alpns` in
/// order of preference.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    alpns: &[Vec<u8>],
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
    // An empty ALPN is left out (an empty protocol name is not valid TLS).
    config.alpn_protocols = alpns
        .iter()
        .filter(|alpn| !alpn.is_empty())
        .cloned()
        .collect();
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

/// How this homeserver trusts peer homeservers: certificates chaining to a CA, and/or pinned
/// certificates per peer domain.
#[derive(Clone, Debug, Default)]
pub struct PeerTrust {
    pub ca: Vec<CertificateDer<'static>>,
    /// domain -> the exact certificate that peer presents.
    pub pinned: Vec<(String, CertificateDer<'static>)>,
    /// When set, only certificates valid for one of these domains are accepted (allow-list).
    pub allowed_domains: Option<Vec<String>>,
}

impl PeerTrust {
    /// Whether `leaf` (already verified in the handshake) may speak for `domain`: it is the
    /// certificate pinned for `domain`, or a CA-issued certificate valid for that name.
    pub fn certificate_speaks_for(&self, leaf: &CertificateDer<'_>, domain: &str) -> bool {
        if self
            .pinned
            .iter()
            .any(|(pinned_domain, pinned)| pinned_domain == domain && pinned == leaf)
        {
            return true;
        }
        if self.ca.is_empty() {
            return false;
        }
        certificate_names(leaf, domain)
    }

    fn allows(&self, leaf: &CertificateDer<'_>) -> bool {
        match &self.allowed_domains {
            None => true,
            Some(domains) => domains
                .iter()
                .any(|domain| self.certificate_speaks_for(leaf, domain)),
        }
    }

    fn ca_roots(&self) -> Result<Option<Arc<rustls::RootCertStore>>, rustls::Error> {
        if self.ca.is_empty() {
            return Ok(None);
        }
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| rustls::Error::General(format!("bad peer CA: {e}")))?;
        }
        Ok(Some(Arc::new(roots)))
    }
}

/// The handshake-signature checks both peer verifiers share: the crypto provider's own.
macro_rules! handshake_signatures {
    () => {
        handshake_signatures!(verify_tls12_signature, verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
    // Each TLS version's check, delegated to the function of the same name.
    ($($verify:ident),*) => {
        $(fn $verify(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::$verify(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        })*
    };
}

/// Verifies the certificates peer homeservers present as TLS clients. Devices present none (they
/// authenticate inside the connection) and pass; a certificate that is presented must be pinned or
/// chain to the peer CA, and (in allow-list mode) be valid for an allowed peer domain, or the
/// handshake fails.
#[derive(Debug)]
struct PeerClientVerifier {
    trust: PeerTrust,
    ca: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for PeerClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.ca.as_ref().map_or(&[], |ca| ca.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let pinned = self
            .trust
            .pinned
            .iter()
            .any(|(_, pinned)| pinned == end_entity);
        if !pinned {
            let Some(ca) = self.ca.as_ref() else {
                log_peer_refusal(
                    "its certificate is not pinned (--peer-cert) and no --peer-ca is set",
                );
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ));
            };
            if let Err(e) = ca.verify_client_cert(end_entity, intermediates, now) {
                log_peer_refusal(&format!(
                    "its certificate does not verify against --peer-ca and is not pinned: {e}"
                ));
                return Err(e);
            }
        }
        if !self.trust.allows(end_entity) {
            log_peer_refusal(
                "its certificate names no domain of the allow-list (--peer; --federation open admits any)",
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Logs why a homeserver's connection was refused, at most once a second (anyone can try).
fn log_peer_refusal(why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_LOGGED_SECOND: AtomicU64 = AtomicU64::new(0);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    if LAST_LOGGED_SECOND.swap(second, Ordering::Relaxed) != second {
        tracing::warn!("refused a peer homeserver's connection: {why}");
    }
}

/// Verifies a peer homeserver's server certificate when this server connects to it: the
/// certificate pinned for that domain, or one chaining to the peer CA valid for the domain.
#[derive(Debug)]
struct PeerServerVerifier {
    trust: PeerTrust,
    ca: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let domain = server_name.to_str();
        let pinned = self
            .trust
            .pinned
            .iter()
            .any(|(pinned_domain, pinned)| *pinned_domain == domain && pinned == end_entity);
        if pinned {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        let ca = self.ca.as_ref().ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))?;
        ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    handshake_signatures!();
}

/// The client-certificate verifier of a homeserver that federates with `trust`.
pub fn peer_client_verifier(
    trust: &PeerTrust,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let provider = crypto_provider();
    let ca = match trust.ca_roots()? {
        Some(roots) => Some(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()
                .context("the peer CA cannot verify clients")?,
        ),
        None => None,
    };
    Ok(Arc::new(PeerClientVerifier {
        trust: trust.clone(),
        ca,
        provider,
    }))
}

/// The rustls client configuration this homeserver uses to reach peers: TLS 1.3, ALPN
/// `alpn`, presenting `identity` as its client certificate, trusting peers through `trust`.
pub fn peer_client_config(
    identity: &TlsIdentity,
    trust: &PeerTrust,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = crypto_provider();
    let ca = match trust.ca_roots()? {
        Some(roots) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .context("the peer CA cannot verify servers")?,
        ),
        None => None,
    };
    let verifier = Arc::new(PeerServerVerifier {
        trust: trust.clone(),
        ca,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .context("the server certificate cannot serve as a client certificate")?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
