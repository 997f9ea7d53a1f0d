//! Topic filters and what a module may subscribe to (pure functions).

/// MQTT 3.1.1 topic filter match (section 4.7), including the rule that a filter starting with a wildcard
/// does not match a topic starting with `$` (rumqttc's `matches` refuses every `$` topic, which would
/// never deliver `$iothub/...`).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) => {
                if f != "+" && f != level {
                    return false;
                }
            }
            None => return false,
        }
    }
    t.next().is_none()
}

/// A syntactically valid MQTT filter: `#` only as a whole last level, `+` only as a whole level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return false;
        }
        if level.contains('+') && *level != "+" {
            return false;
        }
    }
    true
}

/// Whether module `device/module` may subscribe to `filter`: its own `devices/{d}/modules/{m}/...`
/// subtree (inputs and the like) and `$iothub/...` (twin responses, desired patches, method requests).
/// `Err` says why not.
pub fn may_subscribe(filter: &str, device: &str, module: &str) -> Result<(), String> {
    if !valid_filter(filter) {
        return Err(format!("{filter:?} is not a valid MQTT topic filter"));
    }
    let own = format!("devices/{device}/modules/{module}/");
    if filter.starts_with(&own) || filter == format!("devices/{device}/modules/{module}/#").as_str()
    {
        return Ok(());
    }
    if filter.starts_with("$iothub/") {
        return Ok(());
    }
    Err(format!(
        "a module may only subscribe to its own topics `{own}#` and `$iothub/...`, not {filter:?}"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_mqtt() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
        assert!(filter_matches("#", "a/b"));
        assert!(!filter_matches("#", "$iothub/twin/res/200"));
        assert!(!filter_matches("+/twin/#", "$iothub/twin/res/200"));
        assert!(filter_matches(
            "$iothub/twin/res/#",
            "$iothub/twin/res/200/?$rid=1"
        ));
        assert!(filter_matches(
            "devices/d/modules/m/#",
            "devices/d/modules/m/inputs/in1/k=v"
        ));
        assert!(filter_matches(
            "devices/d/modules/m/inputs/#",
            "devices/d/modules/m/inputs/in1/"
        ));
    }

    #[test]
    fn filter_validity() {
        assert!(valid_filter("a/+/b/#"));
        assert!(valid_filter("#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b#"));
        assert!(!valid_filter("a/b+/c"));
        assert!(!valid_filter(""));
    }

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
