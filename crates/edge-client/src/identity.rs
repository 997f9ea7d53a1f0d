//! Who the client is and how it proves it: from the `IOTEDGE_*` environment (tokens signed by the
//! workload API, TLS trusting its trust bundle), from `EdgeHubConnectionString` +
//! `EdgeModuleCACertificateFile` (the C and Python SDKs' fallback), or from a connection string
//! (a module, or a device talking to a real IoT Hub).

use std::path::Path;

use crate::error::ClientError;
use crate::tls::Trust;
use crate::wire::{self, sas, ConnectionString};
use crate::workload::WorkloadClient;

/// The MQTT-over-TLS port of edgeHub and IoT Hub.
pub const DEFAULT_PORT: u16 = 8883;

/// How the client gets its SAS tokens. `Debug` does not show keys or tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A shared access key (base64) the client signs with itself.
    SharedAccessKey(String),
    /// The workload API signs with the module's key (`IOTEDGE_MODULEGENERATIONID`).
    Workload {
        client: WorkloadClient,
        module_id: String,
        generation_id: String,
    },
    /// A ready-made token (`SharedAccessSignature=` in a connection string); it cannot be renewed.
    SasToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::SharedAccessKey(_) => f.write_str("SharedAccessKey(<redacted>)"),
            Credentials::Workload {
                client,
                module_id,
                generation_id,
            } => f
                .debug_struct("Workload")
                .field("client", client)
                .field("module_id", module_id)
                .field("generation_id", generation_id)
                .finish(),
            Credentials::SasToken(_) => f.write_str("SasToken(<redacted>)"),
        }
    }
}

/// A module or device identity with everything needed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The IoT Hub host name (goes into the username and the token's resource).
    pub hub_host: String,
    /// Device id.
    pub device_id: String,
    /// Module id; `None` for a device identity (device topics).
    pub module_id: Option<String>,
    /// The gateway (edgeHub) host to connect to; `None` to connect to `hub_host`. It is also the TLS
    /// server name, so it must match the server certificate.
    pub gateway_host: Option<String>,
    /// TCP port; [`DEFAULT_PORT`] unless `IOTEDGE_GATEWAYPORT` says otherwise.
    pub port: u16,
    /// How tokens are made.
    pub credentials: Credentials,
    /// The TLS roots.
    pub trust: Trust,
}

fn env_err(msg: impl Into<String>) -> ClientError {
    ClientError::Environment(msg.into())
}

fn port_from(get: &dyn Fn(&str) -> Option<String>) -> Result<u16, ClientError> {
    match get("IOTEDGE_GATEWAYPORT") {
        None => Ok(DEFAULT_PORT),
        Some(p) => p.trim().parse().map_err(|_| {
            env_err(format!(
                "IOTEDGE_GATEWAYPORT={p:?} is not a port number (0-65535)"
            ))
        }),
    }
}

impl Identity {
    /// The identity of a module started by iotedged / edge-dev, from the process environment.
    /// See [`Identity::from_env_lookup`].
    pub async fn from_environment() -> Result<Identity, ClientError> {
        Identity::from_env_lookup(&|k: &str| std::env::var(k).ok()).await
    }

    /// The identity from an environment given as a lookup function:
    /// - if `IOTEDGE_WORKLOADURI` is set: `IOTEDGE_IOTHUBHOSTNAME`, `IOTEDGE_DEVICEID`, `IOTEDGE_MODULEID`,
    ///   `IOTEDGE_MODULEGENERATIONID`, `IOTEDGE_GATEWAYHOSTNAME` are required, `IOTEDGE_APIVERSION` is
    ///   optional; the trust bundle is fetched from the workload API now;
    /// - else `EdgeHubConnectionString` (with `ModuleId` and `GatewayHostName`) and
    ///   `EdgeModuleCACertificateFile` (PEM path);
    /// - `IOTEDGE_GATEWAYPORT` (our extension, default 8883) overrides the port in both cases.
    pub async fn from_env_lookup(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Identity, ClientError> {
        let port = port_from(get)?;
        if let Some(uri) = get("IOTEDGE_WORKLOADURI") {
            let need = |k: &str| -> Result<String, ClientError> {
                match get(k) {
                    Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                    _ => Err(env_err(format!(
                        "IOTEDGE_WORKLOADURI is set but {k} is missing or empty; iotedged / edge-dev sets \
                         IOTEDGE_IOTHUBHOSTNAME, IOTEDGE_DEVICEID, IOTEDGE_MODULEID, IOTEDGE_MODULEGENERATIONID \
                         and IOTEDGE_GATEWAYHOSTNAME together"
                    ))),
                }
            };
            let hub_host = need("IOTEDGE_IOTHUBHOSTNAME")?;
            let device_id = need("IOTEDGE_DEVICEID")?;
            let module_id = need("IOTEDGE_MODULEID")?;
            let generation_id = need("IOTEDGE_MODULEGENERATIONID")?;
            let gateway = need("IOTEDGE_GATEWAYHOSTNAME")?;
            let api_version = get("IOTEDGE_APIVERSION");
            let client = WorkloadClient::new(uri.trim(), api_version.as_deref())?;
            let pem = client.trust_bundle().await?;
            // Fail here, with the workload URI in the message, rather than at the first TLS handshake.
            crate::tls::parse_pem_certificates(&pem, &format!("{} /trust-bundle", client.uri()))?;
            let source = format!("{} /trust-bundle", client.uri());
            return Ok(Identity {
                hub_host,
                device_id,
                module_id: Some(module_id.clone()),
                gateway_host: Some(gateway),
                port,
                credentials: Credentials::Workload {
                    client,
                    module_id,
                    generation_id,
                },
                trust: Trust::Pem { pem, source },
            });
        }
        if let Some(cs) = get("EdgeHubConnectionString") {
            let ca = get("EdgeModuleCACertificateFile").ok_or_else(|| {
                env_err(
                    "EdgeHubConnectionString is set but EdgeModuleCACertificateFile (path of the edge CA's PEM \
                     certificate) is not; `edge-dev module-cred NAME` prints both",
                )
            })?;
            let mut id = Identity::from_connection_string(&cs, Some(Path::new(ca.trim())))?;
            if id.module_id.is_none() {
                return Err(env_err("EdgeHubConnectionString has no ModuleId; it must be a module's connection string"));
            }
            if id.gateway_host.is_none() {
                return Err(env_err(
                    "EdgeHubConnectionString has no GatewayHostName; add `;GatewayHostName=localhost` (the edge hub's host)",
                ));
            }
            id.port = port;
            return Ok(id);
        }
        Err(env_err(
            "neither IOTEDGE_WORKLOADURI (set by iotedged / edge-dev for the modules it starts) nor \
             EdgeHubConnectionString + EdgeModuleCACertificateFile is set; run the module under `edge-dev up`, \
             or set those two from `edge-dev module-cred NAME`",
        ))
    }

    /// A module or device identity from a connection string. With `ca_file` the hub's certificate must
    /// chain to that PEM file (an edge gateway); without it, to the system roots (a real IoT Hub).
    /// The port is [`DEFAULT_PORT`]; set `port` afterwards to change it.
    pub fn from_connection_string(
        connection_string: &str,
        ca_file: Option<&Path>,
    ) -> Result<Identity, ClientError> {
        let cs = ConnectionString::parse(connection_string)?;
        let trust = match ca_file {
            Some(path) => {
                let pem =
                    std::fs::read_to_string(path).map_err(|e| ClientError::CaCertificate {
                        path: path.display().to_string(),
                        reason: format!("cannot read it ({e})"),
                    })?;
                let source = path.display().to_string();
                crate::tls::parse_pem_certificates(&pem, &source)?;
                Trust::Pem { pem, source }
            }
            None => Trust::SystemRoots,
        };
        let credentials =
            match (&cs.shared_access_key, &cs.shared_access_signature) {
                (Some(k), _) => Credentials::SharedAccessKey(k.clone()),
                (None, Some(t)) => Credentials::SasToken(t.clone()),
                (None, None) => return Err(ClientError::Wire(wire::WireError::ConnectionString {
                    reason:
                        "x509 authentication is not supported by this client; use a SharedAccessKey"
                            .to_string(),
                })),
            };
        Ok(Identity {
            hub_host: cs.host_name,
            device_id: cs.device_id,
            module_id: cs.module_id,
            gateway_host: cs.gateway_host_name,
            port: DEFAULT_PORT,
            credentials,
            trust,
        })
    }

    /// The host the client connects to (and the TLS server name).
    pub fn connect_host(&self) -> &str {
        self.gateway_host.as_deref().unwrap_or(&self.hub_host)
    }

    /// MQTT client id: `{device}/{module}` or `{device}`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{m}", self.device_id),
            None => self.device_id.clone(),
        }
    }

    /// MQTT username `{hub}/{device}[/{module}]/?api-version=2018-06-30`.
    pub fn username(&self) -> String {
        wire::username(
            &self.hub_host,
            &self.device_id,
            self.module_id.as_deref(),
            wire::MQTT_API_VERSION,
        )
    }

    /// The token's resource URI `{hub}/devices/{device}[/modules/{module}]`.
    pub fn resource_uri(&self) -> String {
        sas::resource_uri(&self.hub_host, &self.device_id, self.module_id.as_deref())
    }

    /// Whether tokens can be renewed (not for a fixed `SharedAccessSignature`).
    pub fn can_renew(&self) -> bool {
        !matches!(self.credentials, Credentials::SasToken(_))
    }

    /// A SAS token valid until `expiry` (unix seconds), signed locally or by the workload API.
    pub async fn sas_token(&self, expiry: u64) -> Result<String, ClientError> {
        let uri = self.resource_uri();
        match &self.credentials {
            Credentials::SharedAccessKey(key) => Ok(sas::generate(&uri, key, expiry)?),
            Credentials::Workload {
                client,
                module_id,
                generation_id,
            } => {
                let to_sign = sas::string_to_sign(&uri, expiry);
                let digest = client
                    .sign(module_id, generation_id, to_sign.as_bytes())
                    .await?;
                use base64::Engine;
                let sig = base64::engine::general_purpose::STANDARD.encode(digest);
                Ok(sas::token_from_signature(&uri, &sig, expiry))
            }
            Credentials::SasToken(t) => Ok(t.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[tokio::test]
    async fn connection_string_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let cs = "HostName=hub.local;DeviceId=dev1;ModuleId=M;SharedAccessKey=c2VjcmV0;GatewayHostName=localhost";
        let get = lookup(&[
            ("EdgeHubConnectionString", cs),
            ("EdgeModuleCACertificateFile", ca.to_str().unwrap()),
            ("IOTEDGE_GATEWAYPORT", "18883"),
        ]);
        let id = Identity::from_env_lookup(&get).await.unwrap();
        assert_eq!(id.port, 18883);
        assert_eq!(id.client_id(), "dev1/M");
        assert_eq!(id.username(), "hub.local/dev1/M/?api-version=2018-06-30");
        assert_eq!(id.connect_host(), "localhost");
        let token = id.sas_token(2000).await.unwrap();
        let parsed = sas::SasToken::parse(&token).unwrap();
        parsed
            .verify("c2VjcmV0", "hub.local/devices/dev1/modules/M", 1000)
            .unwrap();

        let get = lookup(&[("EdgeHubConnectionString", cs)]);
        let e = Identity::from_env_lookup(&get)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("EdgeModuleCACertificateFile"), "{e}");
        let get = lookup(&[
            ("EdgeHubConnectionString", cs),
            ("EdgeModuleCACertificateFile", "/nonexistent/ca.pem"),
        ]);
        let e = Identity::from_env_lookup(&get)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("cannot read"),
            "{e}"
        );
        let get = lookup(&[
            (
                "EdgeHubConnectionString",
                "HostName=h;DeviceId=d;SharedAccessKey=YWJj;GatewayHostName=g",
            ),
            ("EdgeModuleCACertificateFile", ca.to_str().unwrap()),
        ]);
        let e = Identity::from_env_lookup(&get)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no ModuleId"), "{e}");
    }

    #[tokio::test]
    async fn environment_errors_name_the_variable() {
        let e = Identity::from_env_lookup(&lookup(&[]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("IOTEDGE_WORKLOADURI") && e.contains("EdgeHubConnectionString"),
            "{e}"
        );
        let get = lookup(&[
            ("IOTEDGE_WORKLOADURI", "unix:///tmp/none.sock"),
            ("IOTEDGE_IOTHUBHOSTNAME", "h"),
        ]);
        let e = Identity::from_env_lookup(&get)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("IOTEDGE_DEVICEID is missing"), "{e}");
        let get = lookup(&[("IOTEDGE_GATEWAYPORT", "x")]);
        let e = Identity::from_env_lookup(&get)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("IOTEDGE_GATEWAYPORT"), "{e}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let id = Identity::from_connection_string(
            "HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0a2V5",
            None,
        )
        .unwrap();
        let cs =
            ConnectionString::parse("HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0a2V5").unwrap();
        for text in [format!("{id:?}"), format!("{cs:?}")] {
            assert!(
                !text.contains("c2VjcmV0a2V5") && text.contains("redacted"),
                "{text}"
            );
        }
    }

    #[test]
    fn device_identity_uses_system_roots() {
        let id = Identity::from_connection_string(
            "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=YWJj",
            None,
        )
        .unwrap();
        assert_eq!(id.module_id, None);
        assert_eq!(id.trust, Trust::SystemRoots);
        assert_eq!(id.connect_host(), "h.azure-devices.net");
        assert_eq!(id.client_id(), "d");
        assert_eq!(id.resource_uri(), "h.azure-devices.net/devices/d");
        assert_eq!(id.port, DEFAULT_PORT);
    }
}
