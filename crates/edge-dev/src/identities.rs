//! Module identities of the local edge device: a symmetric key and a generation id per module, kept in
//! `<data-dir>/identities.json` (mode 0600) so that `edge-dev module-cred` and later runs use the same keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::EdgeDevError;

/// Default IoT Hub host name of the local device (it appears in SAS tokens and MQTT user names only).
pub const DEFAULT_HUB_HOSTNAME: &str = "edge-dev.local";
/// Default device id of the local edge device.
pub const DEFAULT_DEVICE_ID: &str = "edge-dev-device";

/// One module's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModuleCredential {
    /// Base64 of the 32-byte primary key.
    pub primary_key: String,
    /// The module's generation id, as edgeAgent sets `IOTEDGE_MODULEGENERATIONID`.
    pub generation_id: String,
}

impl ModuleCredential {
    pub fn key_bytes(&self) -> Result<Vec<u8>, EdgeDevError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.primary_key)
            .map_err(|e| EdgeDevError::Config(format!("identities.json holds a key that is not base64 ({e}); delete the file to make new keys")))
    }
}

/// The device and its modules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Identities {
    pub iothub_hostname: String,
    pub device_id: String,
    pub modules: BTreeMap<String, ModuleCredential>,
    #[serde(skip)]
    path: PathBuf,
}

impl Identities {
    /// Loads `<data_dir>/identities.json`, or creates it, and makes sure every module in `modules` has a key.
    pub fn load_or_create<'a>(
        data_dir: &Path,
        modules: impl IntoIterator<Item = &'a str>,
    ) -> Result<Identities, EdgeDevError> {
        let path = data_dir.join("identities.json");
        let mut ids = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Identities>(&bytes).map_err(|e| {
                EdgeDevError::Config(format!(
                    "{} is not valid ({e}); delete it to make new keys",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Identities {
                iothub_hostname: DEFAULT_HUB_HOSTNAME.into(),
                device_id: DEFAULT_DEVICE_ID.into(),
                modules: BTreeMap::new(),
                path: PathBuf::new(),
            },
            Err(e) => {
                return Err(EdgeDevError::Io {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        ids.path = path;
        let mut changed = !ids.path.exists();
        for m in modules {
            if !ids.modules.contains_key(m) {
                ids.modules.insert(m.to_string(), new_credential());
                changed = true;
            }
        }
        if changed {
            ids.save()?;
        }
        Ok(ids)
    }

    fn save(&self) -> Result<(), EdgeDevError> {
        let io = |e| EdgeDevError::Io {
            path: self.path.clone(),
            source: e,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    /// The connection string a module run by hand uses (the C and Python SDKs read it from
    /// `EdgeHubConnectionString`).
    pub fn connection_string(&self, module: &str, gateway: &str) -> Option<String> {
        let cred = self.modules.get(module)?;
        Some(format!(
            "HostName={};DeviceId={};ModuleId={};SharedAccessKey={};GatewayHostName={}",
            self.iothub_hostname, self.device_id, module, cred.primary_key, gateway
        ))
    }
}

fn new_credential() -> ModuleCredential {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let mut gen = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut gen);
    ModuleCredential {
        primary_key: base64::engine::general_purpose::STANDARD.encode(key),
        generation_id: gen.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identities::load_or_create(dir.path(), ["A", "B"]).unwrap();
        assert_eq!(a.modules.len(), 2);
        assert_eq!(a.modules["A"].key_bytes().unwrap().len(), 32);
        let b = Identities::load_or_create(dir.path(), ["B", "C"]).unwrap();
        assert_eq!(b.modules["A"], a.modules["A"]);
        assert_eq!(b.modules["B"], a.modules["B"]);
        assert!(b.modules.contains_key("C"));
        let cs = b.connection_string("C", "localhost").unwrap();
        assert!(
            cs.starts_with(
                "HostName=edge-dev.local;DeviceId=edge-dev-device;ModuleId=C;SharedAccessKey="
            ),
            "{cs}"
        );
        assert!(cs.ends_with(";GatewayHostName=localhost"));
        assert!(b.connection_string("nope", "localhost").is_none());
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("identities.json"), b"{nope").unwrap();
        let e = Identities::load_or_create(dir.path(), ["A"]).unwrap_err();
        assert!(e.to_string().contains("delete it"), "{e}");
    }
}
