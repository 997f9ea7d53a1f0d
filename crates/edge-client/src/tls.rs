//! TLS client configuration (rustls with the ring provider) and explanations of TLS failures.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::error::ClientError;

/// What the client trusts as the root of the hub's server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's roots (a real IoT Hub).
    SystemRoots,
    /// These PEM certificates (the edge CA): `source` says where they came from, for error messages
    /// (a file path, or the workload API's trust bundle).
    Pem { pem: String, source: String },
}

impl Trust {
    /// Where the roots come from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Trust::SystemRoots => "the system's root certificates".to_string(),
            Trust::Pem { source, .. } => format!("the CA at {source}"),
        }
    }
}

/// Parses PEM text into certificates; an error if there is none.
pub fn parse_pem_certificates(
    pem: &str,
    source: &str,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let mut reader = pem.as_bytes();
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut reader) {
        match item {
            Ok(c) => certs.push(c),
            Err(e) => {
                return Err(ClientError::CaCertificate {
                    path: source.to_string(),
                    reason: format!("not valid PEM ({e})"),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(ClientError::CaCertificate {
            path: source.to_string(),
            reason: "contains no `-----BEGIN CERTIFICATE-----` block".to_string(),
        });
    }
    Ok(certs)
}

/// A rustls client configuration trusting `trust`, with the ring crypto provider.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    match trust {
        Trust::SystemRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                // A single unparsable system certificate must not stop the others from working.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ClientError::CaCertificate {
                    path: "system roots".to_string(),
                    reason: format!(
                        "no usable root certificates found ({} errors); install the ca-certificates package",
                        loaded.errors.len()
                    ),
                });
            }
        }
        Trust::Pem { pem, source } => {
            for cert in parse_pem_certificates(pem, source)? {
                roots.add(cert).map_err(|e| ClientError::CaCertificate {
                    path: source.clone(),
                    reason: format!("a certificate cannot be used as a trust root ({e})"),
                })?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::CaCertificate {
            path: trust.describe(),
            reason: format!("TLS setup failed: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Explains a rustls error met while connecting to `host` with `trust`.
pub fn explain(error: &rustls::Error, host: &str, trust: &Trust) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the hub's certificate does not chain to {}; use the CA that signed the hub's server certificate",
            trust.describe()
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
            "the hub's certificate is not valid for the name {host:?}; connect with the host name in the \
             certificate (GatewayHostName / IOTEDGE_GATEWAYHOSTNAME, e.g. localhost)"
        ),
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the hub's certificate has expired (or this machine's clock is wrong)".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "the hub's certificate is not valid yet (is this machine's clock right?)".to_string()
        }
        other => format!("{other}; does the port speak TLS (edgeHub's MQTT port is 8883)?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_say_what_is_wrong() {
        let e = parse_pem_certificates("hello", "/x/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x/ca.pem") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let e = client_config(&Trust::Pem {
            pem: String::new(),
            source: "/y.pem".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/y.pem"), "{e}");
    }

    #[test]
    fn explanations() {
        let t = Trust::Pem {
            pem: String::new(),
            source: "/ca.pem".into(),
        };
        let m = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "localhost",
            &t,
        );
        assert!(m.contains("does not chain to the CA at /ca.pem"), "{m}");
        let m = explain(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            "127.0.0.1",
            &t,
        );
        assert!(m.contains("not valid for the name \"127.0.0.1\""), "{m}");
    }
}
