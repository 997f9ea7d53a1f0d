//! What a module may subscribe to (pure functions). Filter matching and syntax are
//! [`edge_client::topic`]'s, re-exported here for the hub.

pub use edge_client::topic::{matches as filter_matches, valid_filter};

/// Whether module `device/module` may subscribe to `filter`: its own `devices/{d}/modules/{m}/...`
/// subtree (inputs and the like) and `$iothub/...` (twin responses, desired patches, method requests).
/// `Err` says why not.
pub fn may_subscribe(filter: &str, device: &str, module: &str) -> Result<(), SubscribeRefused> {
    if !valid_filter(filter) {
        return Err(SubscribeRefused::InvalidFilter {
            filter: filter.to_string(),
        });
    }
    let own = format!("devices/{device}/modules/{module}/");
    if filter.starts_with(&own) || filter.starts_with("$iothub/") {
        return Ok(());
    }
    Err(SubscribeRefused::NotOwnTopics {
        own,
        filter: filter.to_string(),
    })
}

/// Why a module may not subscribe to a filter ([`may_subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeRefused {
    #[error("{filter:?} is not a valid MQTT topic filter")]
    InvalidFilter { filter: String },
    #[error(
        "a module may only subscribe to its own topics `{own}#` and `$iothub/...`, not {filter:?}"
    )]
    NotOwnTopics { own: String, filter: String },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modules_subscribe_only_to_their_own_topics() {
        assert!(may_subscribe("devices/d/modules/m/#", "d", "m").is_ok());
        assert!(may_subscribe("devices/d/modules/m/inputs/#", "d", "m").is_ok());
        assert!(may_subscribe("$iothub/twin/res/#", "d", "m").is_ok());
        assert!(may_subscribe("$iothub/methods/POST/#", "d", "m").is_ok());
        assert!(may_subscribe("devices/d/modules/other/#", "d", "m").is_err());
        assert!(may_subscribe("devices/d/modules/+/#", "d", "m").is_err());
        assert!(may_subscribe("devices/d/modules/mm/#", "d", "m").is_err());
        assert!(may_subscribe("#", "d", "m").is_err());
        assert!(may_subscribe("devices/#", "d", "m").is_err());
        assert!(may_subscribe("devices/d/modules/m/a#", "d", "m").is_err());
    }
}
