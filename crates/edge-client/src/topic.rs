//! MQTT topic filters (MQTT 3.1.1 section 4.7): matching a topic name against a filter, checking a
//! filter's syntax, and whether one filter covers another. One implementation for everything here
//! that grants or routes by filter: edge-dev's hub (what a module may subscribe to, which
//! subscriptions get a message) and MqttServerModule's device ACL.
//!
//! The rules: levels are separated by `/`; `+` is one whole level, `#` the whole rest (and the
//! parent level itself: `a/#` matches `a`) and only as the last level; a filter whose first level is
//! a wildcard never matches a topic that starts with `$` (`$SYS/...`, `$iothub/...`). Matching is
//! exact and case-sensitive. (rumqttc's own `matches` refuses every `$` topic, which would never
//! deliver `$iothub/...`; hence this module.)

/// Whether topic name `topic` matches `filter`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// Checks a filter's syntax; `Err` says what is wrong, in words for the person who wrote it.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("it is empty");
    }
    if filter.len() > 65_535 {
        return Err("it is longer than 65,535 bytes");
    }
    if filter.contains('\0') {
        return Err("it contains the character U+0000");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level and the last one (e.g. `sensors/#`)");
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level (e.g. `sensors/+/temp`)");
        }
    }
    Ok(())
}

/// Whether `filter` is a syntactically valid filter ([`check_filter`] without the reason).
pub fn valid_filter(filter: &str) -> bool {
    check_filter(filter).is_ok()
}

fn first_level(s: &str) -> &str {
    s.split('/').next().unwrap_or("")
}

/// Whether every topic `inner` (a filter) can match is matched by `outer`: then a grant on `outer`
/// allows a subscription to `inner`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let wild = |l: &str| l == "+" || l == "#";
    // a wildcard first level never matches `$` topics
    if wild(first_level(outer)) && first_level(inner).starts_with('$') {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(ol), Some(il)) => {
                if il == "+" || ol != il {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matching_follows_mqtt() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("a/+/c", "a/x/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/B"));
        assert!(!matches("#", "$iothub/twin/res/200"));
        assert!(!matches("+/twin/#", "$iothub/twin/res/200"));
        assert!(matches(
            "$iothub/twin/res/#",
            "$iothub/twin/res/200/?$rid=1"
        ));
        assert!(matches(
            "devices/d/modules/m/#",
            "devices/d/modules/m/inputs/in1/k=v"
        ));
        assert!(matches(
            "devices/d/modules/m/inputs/#",
            "devices/d/modules/m/inputs/in1/"
        ));
    }

    #[test]
    fn filter_syntax() {
        assert!(valid_filter("a/+/b/#"));
        assert!(valid_filter("#"));
        assert!(valid_filter("+"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b#"));
        assert!(!valid_filter("a/b+/c"));
        assert!(!valid_filter(""));
        assert!(!valid_filter("a/\0"));
        assert!(!valid_filter(&"a".repeat(65_536)));
        assert_eq!(
            check_filter("a/#/b"),
            Err("`#` must be a whole level and the last one (e.g. `sensors/#`)")
        );
    }

    #[test]
    fn covering_is_about_every_topic_of_the_inner_filter() {
        assert!(covers("sensors/#", "sensors/+/temp"));
        assert!(covers("sensors/#", "sensors"));
        assert!(covers("sensors/#", "sensors/#"));
        assert!(covers("sensors/+/temp", "sensors/p1/temp"));
        assert!(covers("sensors/+/temp", "sensors/+/temp"));
        assert!(!covers("sensors/p1/#", "sensors/#"));
        assert!(!covers("sensors/p1/temp", "sensors/+/temp"));
        assert!(!covers("sensors/+", "sensors/#"));
        assert!(!covers("sensors/+/#", "sensors/#"), "sensors itself");
        assert!(!covers("a/b", "a"));
        assert!(!covers("a", "a/b"));
        assert!(covers("#", "#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/+"));
        assert!(!covers("$SYS/#", "#"));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string()),
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_string())]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(filter_level(), 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#".to_string());
                }
                v.join("/")
            })
    }

    proptest! {
        /// A grant on `outer` that covers `inner` allows every topic `inner` matches.
        #[test]
        fn covering_is_sound(outer in filter(), inner in filter(), t in topic()) {
            if covers(&outer, &inner) && matches(&inner, &t) {
                prop_assert!(matches(&outer, &t), "{outer} covers {inner} but not {t}");
            }
        }

        /// And complete: when `outer` does not cover `inner`, some topic shows it (searched over
        /// the filters' levels plus one they never use, one level longer than the longer filter).
        #[test]
        fn covering_is_complete(outer in filter(), inner in filter()) {
            if !covers(&outer, &inner) {
                let levels = ["a", "b", "", "$s", "c"];
                let max = outer.split('/').count().max(inner.split('/').count()) + 1;
                let mut found = false;
                let mut current: Vec<Vec<&str>> = vec![Vec::new()];
                'search: for _ in 0..max {
                    let mut next = Vec::new();
                    for t in &current {
                        for l in levels {
                            let mut t = t.clone();
                            t.push(l);
                            let topic = t.join("/");
                            if matches(&inner, &topic) && !matches(&outer, &topic) {
                                found = true;
                                break 'search;
                            }
                            next.push(t);
                        }
                    }
                    current = next;
                }
                prop_assert!(found, "{outer} does not cover {inner}, but no topic shows it");
            }
        }

        /// A filter covers itself, and a topic name is covered exactly when it matches.
        #[test]
        fn covering_agrees_with_matching(f in filter(), t in topic()) {
            prop_assert!(covers(&f, &f));
            prop_assert_eq!(covers(&f, &t), matches(&f, &t));
        }
    }
}
