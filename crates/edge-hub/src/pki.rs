//! The development PKI of the local hub: a CA that `edge-dev` generates once and keeps in its data directory,
//! and a TLS server certificate for the hub signed by it.
//!
//! Parts:
//! - [`DevPki::load_or_create`]: loads `ca.pem`/`ca.key.pem` (or makes them), and (re)issues `server.pem`/
//!   `server.key.pem` when the host names changed, the server certificate is close to expiry, or is missing.
//! - [`DevPki::server_config`]: the rustls server configuration (TLS 1.2 and 1.3, ring) for the hub.
//!
//! Modules trust the CA (the workload API's trust bundle, or `EdgeModuleCACertificateFile`), so the CA
//! must survive restarts; the server certificate is cheap and is reissued whenever it does not fit.
//! The CA certificate itself is never parsed back: to sign with it, its parameters are rebuilt from the same
//! constants and its stored key, which yields the same issuer name and key identifier.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// Names every server certificate carries, besides the ones passed to [`DevPki::load_or_create`].
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "edgeHub", "127.0.0.1"];

const CA_COMMON_NAME: &str = "edge-dev local CA (development only)";
const CA_VALID_DAYS: i64 = 3650;
const SERVER_VALID_DAYS: i64 = 365;
/// A server certificate expiring within this many days is reissued at start.
const SERVER_RENEW_DAYS: i64 = 30;

/// Errors of the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "cannot access {path}: {source}; check that the data directory is writable by this user"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid key or certificate ({detail}); delete the PKI directory {dir} to create a new CA (modules must then fetch the new CA)")]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        detail: String,
    },
    #[error("cannot create a certificate for host name {name:?}: {detail}; use a DNS name or an IP address")]
    BadName { name: String, detail: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration failed: {0}; the PKI files may be inconsistent, delete the server certificate files to reissue them")]
    Tls(String),
}

/// The CA and the hub's server certificate, in PEM, and the path of the CA certificate file (what modules
/// are told to trust).
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub ca_path: PathBuf,
    server_config: Arc<rustls::ServerConfig>,
}

/// What was issued, kept beside the server certificate so a restart knows whether to reissue it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ServerMeta {
    /// Subject alternative names of `server.pem`, sorted.
    names: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    not_after_unix: i64,
    /// SHA-256 (hex) of the PEM of the CA that signed it.
    ca_check: String,
}

impl DevPki {
    /// Loads the PKI kept in `dir` or creates what is missing. `hostnames` are added to the server
    /// certificate's names (`localhost`, `edgeHub` and `127.0.0.1` are always there).
    pub fn load_or_create(dir: &Path, hostnames: &[&str]) -> Result<DevPki, PkiError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PkiError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca_path = dir.join("ca.pem");
        let ca_key_path = dir.join("ca.key.pem");
        let server_path = dir.join("server.pem");
        let server_key_path = dir.join("server.key.pem");
        let meta_path = dir.join("server.json");
        let corrupt = |path: &Path, detail: String| PkiError::Corrupt {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            detail,
        };

        // The CA: kept across runs.
        let (ca_key, ca_cert_pem) = if ca_path.exists() && ca_key_path.exists() {
            let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&ca_key_path, e.to_string()))?;
            let cert_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
            if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(corrupt(&ca_path, "no PEM certificate in it".into()));
            }
            (key, cert_pem)
        } else {
            let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
            let cert = ca_params(true)?
                .self_signed(&key)
                .map_err(|e| PkiError::Generate(e.to_string()))?;
            let cert_pem = cert.pem();
            write_private(&ca_key_path, &key.serialize_pem())?;
            std::fs::write(&ca_path, &cert_pem).map_err(io(&ca_path))?;
            tracing::info!(ca = %ca_path.display(), "created a new development CA; modules must trust this file");
            (key, cert_pem)
        };

        // The server certificate: reissued when it does not fit.
        let mut names: Vec<String> = DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
        for n in hostnames {
            if !n.is_empty() && !names.iter().any(|m| m == n) {
                names.push((*n).to_string());
            }
        }
        names.sort();
        let ca_check = checksum(&ca_cert_pem);
        let now = Utc::now();
        let existing: Option<ServerMeta> = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let reusable = match &existing {
            Some(m) => {
                m.names == names
                    && m.ca_check == ca_check
                    && m.not_after_unix > (now + Duration::days(SERVER_RENEW_DAYS)).timestamp()
                    && server_path.exists()
                    && server_key_path.exists()
            }
            None => false,
        };
        let (server_cert_pem, server_key_pem) =
            if reusable {
                (
                    std::fs::read_to_string(&server_path).map_err(io(&server_path))?,
                    std::fs::read_to_string(&server_key_path).map_err(io(&server_key_path))?,
                )
            } else {
                let ca_cert = ca_params(false)?
                    .self_signed(&ca_key)
                    .map_err(|e| PkiError::Generate(e.to_string()))?;
                let key = KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "edgeHub");
                params.distinguished_name = dn;
                params.subject_alt_names =
                    names
                        .iter()
                        .map(|n| match n.parse::<std::net::IpAddr>() {
                            Ok(ip) => Ok(SanType::IpAddress(ip)),
                            Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(
                                |e: rcgen::Error| PkiError::BadName {
                                    name: n.clone(),
                                    detail: e.to_string(),
                                },
                            ),
                        })
                        .collect::<Result<_, _>>()?;
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params.use_authority_key_identifier_extension = true;
                let not_after = now + Duration::days(SERVER_VALID_DAYS);
                set_validity(&mut params, now - Duration::days(1), not_after);
                let cert = params
                    .signed_by(&key, &ca_cert, &ca_key)
                    .map_err(|e| PkiError::Generate(e.to_string()))?;
                let cert_pem = cert.pem();
                let key_pem = key.serialize_pem();
                write_private(&server_key_path, &key_pem)?;
                std::fs::write(&server_path, &cert_pem).map_err(io(&server_path))?;
                let meta = ServerMeta {
                    names: names.clone(),
                    // set_validity() truncates to the day: record that day, so the renewal check is conservative.
                    not_after_unix: not_after
                        .date_naive()
                        .and_hms_opt(0, 0, 0)
                        .map(|d| d.and_utc().timestamp())
                        .unwrap_or(0),
                    ca_check,
                };
                let meta_json = serde_json::to_vec_pretty(&meta)
                    .map_err(|e| PkiError::Generate(e.to_string()))?;
                std::fs::write(&meta_path, meta_json).map_err(io(&meta_path))?;
                tracing::info!(names = ?names, "issued the hub's TLS server certificate");
                (cert_pem, key_pem)
            };

        let server_config = build_server_config(&server_cert_pem, &server_key_pem, &ca_cert_pem)
            .map_err(|detail| corrupt(&server_path, detail))?;
        Ok(DevPki {
            ca_cert_pem,
            server_cert_pem,
            server_key_pem,
            ca_path,
            server_config,
        })
    }

    /// The TLS configuration of the hub's listener: TLS 1.2 and 1.3 with the ring provider, no client
    /// certificates, the chain server certificate + CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config.clone()
    }
}

fn ca_params(fresh_validity: bool) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "edge-dev");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if fresh_validity {
        let now = Utc::now();
        set_validity(
            &mut params,
            now - Duration::days(1),
            now + Duration::days(CA_VALID_DAYS),
        );
    }
    Ok(params)
}

/// Sets the validity to whole days from `from` to `to` (rcgen takes `time` dates; we use chrono).
fn set_validity(
    params: &mut CertificateParams,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
) {
    // Month and day are always in range, so the casts cannot truncate.
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(to.year(), to.month() as u8, to.day() as u8);
}

/// SHA-256 of the CA PEM, hex: a server certificate signed by another CA is reissued.
fn checksum(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, contents).map_err(io)
    }
}

fn build_server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut chain = Vec::new();
    for pem in [cert_pem, ca_pem] {
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            chain.push(c.map_err(|e| e.to_string())?);
        }
    }
    if chain.len() < 2 {
        return Err("expected the server certificate and the CA certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no private key found".to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_and_server_cert_follows_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevPki::load_or_create(dir.path(), &["edge-dev.local"]).unwrap();
        let b = DevPki::load_or_create(dir.path(), &["edge-dev.local"]).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(
            a.server_cert_pem, b.server_cert_pem,
            "same names: server certificate reused"
        );
        let c = DevPki::load_or_create(dir.path(), &["other.example"]).unwrap();
        assert_eq!(
            a.ca_cert_pem, c.ca_cert_pem,
            "the CA survives a change of names"
        );
        assert_ne!(
            a.server_cert_pem, c.server_cert_pem,
            "new names: server certificate reissued"
        );
        assert_eq!(c.ca_path, dir.path().join("ca.pem"));
    }

    #[test]
    fn corrupt_ca_key_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        DevPki::load_or_create(dir.path(), &[]).unwrap();
        std::fs::write(dir.path().join("ca.key.pem"), "garbage").unwrap();
        let err = DevPki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("delete the PKI directory"),
            "{err}"
        );
    }
}
