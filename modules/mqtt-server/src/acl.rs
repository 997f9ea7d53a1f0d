//! Access control from a Mosquitto-style ACL file (`acl_file`, env `MQTT_ACL_FILE`): which topics a
//! client may publish to and subscribe to. Pure and synchronous: [`Acl::parse`] reads the file,
//! [`Acl::for_client`] resolves the lines that apply to one connection (its username's block and
//! the patterns, with `%c`/`%u` substituted), and [`ClientAcl`] answers each check. The connection
//! code only asks and acts on the answer.
//!
//! ## The file
//!
//! One statement per line; leading and trailing blanks are ignored, and so are blank lines and
//! lines whose first non-blank character is `#` (a `#` later in a line is part of the filter).
//! Keywords are lower case, as in Mosquitto.
//!
//! - `user <name>`: the `topic` lines that follow, up to the next `user` line, apply to clients
//!   that connected with that MQTT username. Several blocks for one name add up.
//! - `topic [read|write|readwrite|deny] <filter>`: the access is `readwrite` when left out; the
//!   filter is the rest of the line (it may contain blanks, but then the access must be given).
//!   `topic` lines before the first `user` line apply to clients without a username.
//! - `pattern [read|write|readwrite|deny] <filter>`: applies to every client, wherever it stands
//!   in the file (also inside a `user` block). In the filter, `%c` is replaced by the client id and
//!   `%u` by the username, anywhere in the string (`sensors/%c/#`, `dev-%u/in`), in one pass (a `%u`
//!   inside a substituted client id stays as it is). A pattern with `%u` does not apply to a client
//!   without a username. In `topic` lines `%c` and `%u` are plain characters.
//!
//! `read` allows SUBSCRIBE and delivery, `write` allows PUBLISH (and will messages), `readwrite`
//! both, `deny` neither. Filters use MQTT's wildcards: `+` is one whole level, `#` the last
//! level and everything below it (including the parent: `a/#` matches `a`). A filter whose first
//! level is a wildcard does not match topics starting with `$`, as in MQTT.
//!
//! ## How a check is decided
//!
//! For a client, the lines that count are its username's block (or the anonymous lines when it
//! has no username) and every pattern that applies to it. Then:
//!
//! 1. if any of those lines is `deny` and matches, the client is refused, whatever else allows it
//!    (a deny line wins, also over a grant in the client's own `user` block);
//! 2. otherwise, if a line with the needed access matches, it is allowed;
//! 3. otherwise it is refused: with an ACL file, nothing is allowed that no line allows.
//!
//! - PUBLISH (and the will message) needs `write` on the topic.
//! - SUBSCRIBE needs a `read` line that covers the whole filter (every topic the filter can match
//!   is matched by that line: `sensors/+/temp` covers `sensors/p1/temp`, `sensors/#` covers
//!   `sensors/+/temp`, but `sensors/p1/#` does not cover `sensors/#`), and no `deny` line that
//!   covers the whole filter. For `$share/{group}/{filter}` the filter after the group counts.
//! - Each delivery to a subscriber (live, queued while it was away, retained) needs `read` on the
//!   message's topic, so a deny line narrower than a granted subscription still holds, and so does
//!   a session subscribed before the file changed.
//!
//! ## Client ids and usernames that could widen a pattern
//!
//! A client chooses its id (and, without a password file, its username). An id like `a/b`
//! substituted into `pattern write sensors/%c/#` would give it `sensors/a/b/#`, inside client
//! `a`'s topics, and `+` or `#` would be wildcards. So a pattern that substitutes a value
//! containing `+`, `#` or `/`, or an empty one, never grants anything to that client; and if such a
//! pattern is a `deny` line, the client is refused everything (what the line meant for it cannot be
//! told, so it fails closed). Its own `topic` lines still apply. Mosquitto refuses the same values.
//!
//! `%c` is whatever id the client claims, even with a password file: a device that knows any valid
//! password can claim another device's id. With `MQTT_AUTH_FILE`, prefer `%u` patterns (or `user`
//! blocks), which rest on the password.
//!
//! ## Compared with Mosquitto 2.0
//!
//! Same file format, the same `%c`/`%u` rules and refusal of unsafe ids, the same outcome for
//! publishes and will messages. Differences, all stricter or clearer: Mosquitto checks the user's
//! own lines before the patterns, so there a `deny` pattern does not override a grant in the user's
//! block (here every deny wins); Mosquitto grants every SUBSCRIBE and filters deliveries only
//! (here a subscription that no read line covers is refused at once with a failure code, and
//! deliveries are filtered too); an unknown keyword, a bad access word, an invalid filter, or
//! `topic read` without a filter are start-up errors here (Mosquitto ignores unknown keywords and
//! reads `topic read` as the topic `read`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_client::topic;

/// What a line allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn from_word(w: &str) -> Option<Access> {
        match w {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// A line of the ACL file that cannot be read. Each names the line (counted from 1) and says what
/// to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("line {line}: unknown keyword {keyword:?}; each line is `user <name>`, `topic [read|write|readwrite|deny] <filter>`, `pattern [read|write|readwrite|deny] <filter>`, a comment starting with `#`, or blank")]
    UnknownKeyword { line: usize, keyword: String },
    #[error("line {line}: `user` without a name; write `user <username>` (the `topic` lines after it apply to clients that log in with that username)")]
    MissingUser { line: usize },
    #[error("line {line}: `{keyword}` without a topic filter; write `{keyword} [read|write|readwrite|deny] <filter>`, e.g. `{keyword} write sensors/#`")]
    MissingFilter { line: usize, keyword: &'static str },
    #[error("line {line}: {word:?} is not an access; write read, write, readwrite or deny before the filter (a filter that contains a blank needs the access first, e.g. `topic readwrite my topic`)")]
    BadAccess { line: usize, word: String },
    #[error("line {line}: {filter:?} is not a valid MQTT topic filter: {why}")]
    BadFilter {
        line: usize,
        filter: String,
        why: &'static str,
    },
}

impl AclError {
    /// The line (counted from 1) the error is about.
    pub fn line(&self) -> usize {
        match self {
            AclError::UnknownKeyword { line, .. }
            | AclError::MissingUser { line }
            | AclError::MissingFilter { line, .. }
            | AclError::BadAccess { line, .. }
            | AclError::BadFilter { line, .. } => *line,
        }
    }
}

/// Why a check failed; shown in the log line with what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No line gives the access. `unsafe_name`: pattern lines were skipped for this client
    /// because its id or username contains `+`, `#` or `/` (or is empty).
    NoLine { unsafe_name: bool },
    /// The `deny` line on this line matches.
    DenyLine(usize),
    /// The `deny` pattern on this line uses an id or username that contains `+`, `#` or `/` (or
    /// is empty): the client is refused everything.
    UnsafeName(usize),
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::NoLine { unsafe_name: false } => write!(f, "no line of the ACL file allows it"),
            Denied::NoLine { unsafe_name: true } => write!(
                f,
                "no line of the ACL file allows it (pattern lines do not apply to this client: its client id or username contains '+', '#' or '/', or is empty)"
            ),
            Denied::DenyLine(n) => write!(f, "line {n} of the ACL file denies it"),
            Denied::UnsafeName(n) => write!(
                f,
                "its client id or username contains '+', '#' or '/' (or is empty), so the deny pattern on line {n} of the ACL file cannot be applied to it and it is refused everything"
            ),
        }
    }
}

/// What was refused, for the advice in a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Subscribe,
    Will,
}

/// What to do about a refusal, in one sentence for the log.
pub fn advice(kind: Kind, topic: &str, why: Denied) -> String {
    let access = match kind {
        Kind::Publish | Kind::Will => "write",
        Kind::Subscribe => "read",
    };
    match why {
        Denied::NoLine { .. } => format!(
            "if this client should have it, add a topic/pattern line for {topic:?} with {access} access to the ACL file (MQTT_ACL_FILE): `topic {access} {topic}` in its user's block (before any `user` line for clients without a username) or a `pattern {access} ...` line with %c/%u, and restart the module"
        ),
        Denied::DenyLine(n) => format!(
            "if this client should have {access} access to {topic:?}, narrow or remove line {n} of the ACL file (MQTT_ACL_FILE) and restart the module"
        ),
        Denied::UnsafeName(_) => {
            "give the device a client id and username without '+', '#' and '/'".to_string()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
    line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    access: Access,
    template: String,
    line: usize,
    uses_c: bool,
    uses_u: bool,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Pattern>,
    warnings: Vec<String>,
}

/// Splits off the first blank-separated word; the rest starts at the next non-blank.
fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// A value that may be substituted for `%c` / `%u` without reaching other clients' topics.
fn safe_name(v: &str) -> bool {
    !v.is_empty() && !v.contains(['+', '#', '/'])
}

/// `%c` -> client id, `%u` -> username, in one pass.
fn substitute(template: &str, client_id: &str, username: &str) -> String {
    let mut out = String::with_capacity(template.len() + client_id.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.peek() {
                Some('c') => {
                    chars.next();
                    out.push_str(client_id);
                    continue;
                }
                Some('u') => {
                    chars.next();
                    out.push_str(username);
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

impl Acl {
    /// Reads the text of an ACL file (format in the module documentation above).
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        // a byte order mark some editors write is not part of the first keyword
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let s = raw.trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(s);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(AclError::MissingUser { line });
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let keyword: &'static str = if keyword == "topic" {
                        "topic"
                    } else {
                        "pattern"
                    };
                    let (first, after) = split_word(rest);
                    if first.is_empty() {
                        return Err(AclError::MissingFilter { line, keyword });
                    }
                    let (access, filter) = match (Access::from_word(first), after.is_empty()) {
                        (Some(_), true) => return Err(AclError::MissingFilter { line, keyword }),
                        (Some(a), false) => (a, after),
                        (None, true) => (Access::ReadWrite, first),
                        (None, false) => {
                            return Err(AclError::BadAccess {
                                line,
                                word: first.to_string(),
                            })
                        }
                    };
                    topic::check_filter(filter).map_err(|why| AclError::BadFilter {
                        line,
                        filter: filter.to_string(),
                        why,
                    })?;
                    if keyword == "pattern" {
                        acl.patterns.push(Pattern {
                            access,
                            template: filter.to_string(),
                            line,
                            uses_c: filter.contains("%c"),
                            uses_u: filter.contains("%u"),
                        });
                    } else {
                        if filter.contains("%c") || filter.contains("%u") {
                            acl.warnings.push(format!(
                                "ACL file line {line}: %c/%u in a `topic` line are plain characters; write `pattern` to substitute the client id/username"
                            ));
                        }
                        let rule = Rule {
                            access,
                            filter: filter.to_string(),
                            line,
                        };
                        match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(AclError::UnknownKeyword {
                        line,
                        keyword: other.to_string(),
                    })
                }
            }
        }
        if acl.anonymous.is_empty()
            && acl.patterns.is_empty()
            && acl.users.values().all(Vec::is_empty)
        {
            acl.warnings.push(
                "the ACL file has no topic or pattern lines: every publish and subscription will be refused".to_string(),
            );
        }
        Ok(acl)
    }

    /// Things worth telling at start (the file is valid, but probably not what was meant).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The usernames that have a `user` block.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Whether there are `topic` lines for clients without a username.
    pub fn has_anonymous_lines(&self) -> bool {
        !self.anonymous.is_empty()
    }

    /// (users, anonymous lines, patterns), for the start-up log.
    pub fn summary(&self) -> (usize, usize, usize) {
        (self.users.len(), self.anonymous.len(), self.patterns.len())
    }

    /// The lines that apply to one connection, with `%c`/`%u` substituted.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> ClientAcl {
        let mut rules: Vec<Rule> = match username {
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        let mut deny_all = None;
        let mut unsafe_name = false;
        for p in &self.patterns {
            if p.uses_u && username.is_none() {
                continue;
            }
            let unsafe_c = p.uses_c && !safe_name(client_id);
            let unsafe_u = p.uses_u && !username.is_some_and(safe_name);
            if unsafe_c || unsafe_u {
                unsafe_name = true;
                if p.access == Access::Deny && deny_all.is_none() {
                    deny_all = Some(p.line);
                }
                continue;
            }
            rules.push(Rule {
                access: p.access,
                filter: substitute(&p.template, client_id, username.unwrap_or("")),
                line: p.line,
            });
        }
        ClientAcl {
            rules,
            deny_all,
            unsafe_name,
        }
    }
}

/// The ACL lines that apply to one connection.
#[derive(Debug, Clone)]
pub struct ClientAcl {
    rules: Vec<Rule>,
    deny_all: Option<usize>,
    unsafe_name: bool,
}

impl ClientAcl {
    fn check_topic(&self, topic: &str, need: fn(Access) -> bool) -> Result<(), Denied> {
        if let Some(line) = self.deny_all {
            return Err(Denied::UnsafeName(line));
        }
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.access == Access::Deny && topic::matches(&r.filter, topic))
        {
            return Err(Denied::DenyLine(r.line));
        }
        if self
            .rules
            .iter()
            .any(|r| need(r.access) && topic::matches(&r.filter, topic))
        {
            Ok(())
        } else {
            Err(Denied::NoLine {
                unsafe_name: self.unsafe_name,
            })
        }
    }

    /// May the client publish to `topic` (a topic name)?
    pub fn check_write(&self, topic: &str) -> Result<(), Denied> {
        self.check_topic(topic, Access::writes)
    }

    /// May a message on `topic` be delivered to the client?
    pub fn check_read(&self, topic: &str) -> Result<(), Denied> {
        self.check_topic(topic, Access::reads)
    }

    /// May the client subscribe to `filter` (a valid filter, possibly `$share/{group}/{filter}`)?
    pub fn check_subscribe(&self, filter: &str) -> Result<(), Denied> {
        let filter = crate::broker::shared_parts(filter)
            .map(|(_, f)| f)
            .unwrap_or(filter);
        if let Some(line) = self.deny_all {
            return Err(Denied::UnsafeName(line));
        }
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.access == Access::Deny && topic::covers(&r.filter, filter))
        {
            return Err(Denied::DenyLine(r.line));
        }
        if self
            .rules
            .iter()
            .any(|r| r.access.reads() && topic::covers(&r.filter, filter))
        {
            Ok(())
        } else {
            Err(Denied::NoLine {
                unsafe_name: self.unsafe_name,
            })
        }
    }
}

/// Keeps refusal warnings few: at most one line per client id per [`RefusalLog::PER_CLIENT`]
/// (the line counts the refusals not logged since the last one) and at most
/// [`RefusalLog::PER_SECOND`] lines a second over all clients, so a hostile client (or many
/// with made-up ids) cannot flood the log. Every refusal is still counted in the metrics.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    clients: HashMap<String, (Instant, u64)>,
    second: Option<Instant>,
    lines_this_second: u32,
}

impl RefusalLog {
    /// The shortest time between two warnings about one client.
    pub const PER_CLIENT: Duration = Duration::from_secs(600);
    /// The most warnings a second over all clients.
    pub const PER_SECOND: u32 = 5;
    /// The most clients remembered; past it, old entries go first.
    const MAX_CLIENTS: usize = 10_000;

    /// Whether to write a warning about `client` now. `Some(n)`: yes, and `n` refusals of this
    /// client were not logged since its previous warning.
    pub fn admit(&self, client: &str, now: Instant) -> Option<u64> {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if let Some((last, skipped)) = st.clients.get_mut(client) {
            if now.saturating_duration_since(*last) < Self::PER_CLIENT {
                *skipped += 1;
                return None;
            }
        }
        match st.second {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => {
                if st.lines_this_second >= Self::PER_SECOND {
                    if let Some((_, skipped)) = st.clients.get_mut(client) {
                        *skipped += 1;
                    }
                    return None;
                }
            }
            _ => {
                st.second = Some(now);
                st.lines_this_second = 0;
            }
        }
        st.lines_this_second += 1;
        if st.clients.len() >= Self::MAX_CLIENTS && !st.clients.contains_key(client) {
            st.clients
                .retain(|_, (last, _)| now.saturating_duration_since(*last) < Self::PER_CLIENT);
            if st.clients.len() >= Self::MAX_CLIENTS {
                // all recent: the per-second bound still holds
                st.clients.clear();
            }
        }
        let skipped = st
            .clients
            .insert(client.to_string(), (now, 0))
            .map(|(_, n)| n)
            .unwrap_or(0);
        Some(skipped)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text).expect("valid ACL")
    }

    #[test]
    fn filters_are_checked() {
        assert!(topic::check_filter("a/#").is_ok());
        assert!(topic::check_filter("+/+/#").is_ok());
        assert!(topic::check_filter("a/b#").is_err());
        assert!(topic::check_filter("a/#/b").is_err());
        assert!(topic::check_filter("a+/b").is_err());
        assert!(topic::check_filter("").is_err());
    }

    #[test]
    fn parse_errors_name_the_line_and_what_to_write() {
        let cases: [(&str, usize, &str); 7] = [
            (
                "topic read a\ntpoic write b\n",
                2,
                "unknown keyword \"tpoic\"",
            ),
            ("# c\n\nuser\n", 3, "`user` without a name"),
            ("topic\n", 1, "`topic` without a topic filter"),
            ("pattern read\n", 1, "`pattern` without a topic filter"),
            ("topic rw sensors/#\n", 1, "\"rw\" is not an access"),
            ("topic my topic\n", 1, "needs the access first"),
            ("user x\n  pattern write sensors/%c#\n", 2, "whole level"),
        ];
        for (text, line, what) in cases {
            let e = Acl::parse(text).expect_err(text);
            assert_eq!(e.line(), line, "{text}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
            assert!(msg.contains(what), "{text}: {msg}");
        }
    }

    #[test]
    fn the_format_as_mosquitto_reads_it() {
        let a = acl("\u{feff}# comment\n\
             \n\
             topic read public/#\n\
             topic   readwrite  my topic with spaces  \n\
             user alice\n\
             topic write alice/out\n\
             pattern write sensors/%c/#\n\
             topic alice/both\n\
             user bob smith\n\
             topic read bob/#\r\n\
             user alice\n\
             topic read alice/in\n");
        assert_eq!(a.summary(), (2, 2, 1));
        let anon = a.for_client("esp-1", None);
        assert!(anon.check_subscribe("public/x").is_ok());
        assert!(anon.check_write("public/x").is_err());
        assert!(anon.check_write("my topic with spaces").is_ok());
        assert!(
            anon.check_write("sensors/esp-1/t").is_ok(),
            "patterns apply to all"
        );
        assert!(anon.check_write("sensors/esp-2/t").is_err());
        assert!(anon.check_write("alice/out").is_err());
        let alice = a.for_client("a-1", Some("alice"));
        assert!(alice.check_write("alice/out").is_ok());
        assert!(alice.check_read("alice/out").is_err());
        assert!(alice.check_write("alice/both").is_ok() && alice.check_read("alice/both").is_ok());
        assert!(alice.check_read("alice/in").is_ok(), "two blocks add up");
        assert!(
            alice.check_read("public/x").is_err(),
            "anonymous lines are not hers"
        );
        assert!(alice.check_write("sensors/a-1/x").is_ok());
        let bob = a.for_client("b", Some("bob smith"));
        assert!(bob.check_subscribe("bob/#").is_ok());
        let stranger = a.for_client("s", Some("carol"));
        assert!(stranger.check_write("alice/out").is_err());
        assert!(stranger.check_write("sensors/s/1").is_ok());
    }

    #[test]
    fn deny_wins_over_any_grant() {
        let a = acl("user u\n\
             topic readwrite sensors/#\n\
             topic deny sensors/secret\n\
             pattern deny sensors/%c/config\n");
        let c = a.for_client("dev", Some("u"));
        assert_eq!(c.check_write("sensors/x"), Ok(()));
        assert_eq!(c.check_write("sensors/secret"), Err(Denied::DenyLine(3)));
        assert_eq!(c.check_read("sensors/secret"), Err(Denied::DenyLine(3)));
        assert_eq!(
            c.check_write("sensors/dev/config"),
            Err(Denied::DenyLine(4))
        );
        assert_eq!(c.check_write("sensors/other/config"), Ok(()));
        // a subscription is granted when a read line covers it; the deny still filters deliveries
        assert_eq!(c.check_subscribe("sensors/#"), Ok(()));
        assert_eq!(
            c.check_subscribe("sensors/secret"),
            Err(Denied::DenyLine(3))
        );
        assert_eq!(
            c.check_subscribe("$share/g/sensors/secret"),
            Err(Denied::DenyLine(3))
        );
        assert_eq!(c.check_subscribe("$share/g/sensors/+"), Ok(()));
        assert_eq!(
            c.check_subscribe("#"),
            Err(Denied::NoLine { unsafe_name: false })
        );
    }

    #[test]
    fn unsafe_ids_get_nothing_from_patterns() {
        let a = acl("topic read status/#\npattern write sensors/%c/#\npattern read cmd/%u\n");
        for id in ["a/b", "+", "#", "x+y", ""] {
            let c = a.for_client(id, None);
            assert_eq!(
                c.check_write(&format!("sensors/{id}/t")),
                Err(Denied::NoLine { unsafe_name: true }),
                "{id:?}"
            );
            assert!(c.check_write("sensors/a/b/t").is_err(), "{id:?}");
            assert!(
                c.check_read("status/x").is_ok(),
                "its topic lines still apply"
            );
        }
        // %u without a username: the pattern does not apply (and is not unsafe)
        let c = a.for_client("dev", None);
        assert_eq!(
            c.check_read("cmd/"),
            Err(Denied::NoLine { unsafe_name: false })
        );
        let c = a.for_client("dev", Some("a/b"));
        assert_eq!(
            c.check_read("cmd/a/b"),
            Err(Denied::NoLine { unsafe_name: true })
        );
        assert!(c.check_write("sensors/dev/1").is_ok(), "its id is safe");
        // a deny pattern that cannot be applied safely refuses everything
        let a = acl("topic readwrite #\npattern deny %c/private\n");
        assert_eq!(
            a.for_client("x/y", None).check_write("t"),
            Err(Denied::UnsafeName(2))
        );
        assert_eq!(a.for_client("x", None).check_write("t"), Ok(()));
        assert_eq!(
            a.for_client("x", None).check_write("x/private"),
            Err(Denied::DenyLine(2))
        );
    }

    #[test]
    fn substitution_is_one_pass_and_anywhere_in_the_filter() {
        assert_eq!(substitute("a/%c/%u", "%u", "bob"), "a/%u/bob");
        assert_eq!(substitute("dev-%c/x%", "7", "u"), "dev-7/x%");
        assert_eq!(substitute("%%c", "7", "u"), "%7");
        let a = acl("pattern write dev-%c/in\n");
        assert!(a.for_client("7", None).check_write("dev-7/in").is_ok());
    }

    #[test]
    fn topic_lines_keep_percent_signs_and_an_empty_file_warns() {
        let a = acl("topic write a/%c\n");
        assert!(a.for_client("x", None).check_write("a/%c").is_ok());
        assert!(a.for_client("x", None).check_write("a/x").is_err());
        assert_eq!(a.warnings().len(), 1);
        let a = acl("# nothing\nuser bob\n");
        assert!(a.warnings()[0].contains("every publish and subscription will be refused"));
        assert!(a.for_client("x", Some("bob")).check_write("t").is_err());
    }

    #[test]
    fn dollar_topics_need_lines_that_start_with_dollar() {
        let a = acl("topic readwrite #\ntopic read $SYS/broker/#\n");
        let c = a.for_client("x", None);
        assert!(c.check_write("$SYS/x").is_err());
        assert!(c.check_read("$SYS/broker/load").is_ok());
        assert!(c.check_subscribe("$SYS/#").is_err());
        assert!(c.check_subscribe("$SYS/broker/+").is_ok());
    }

    #[test]
    fn advice_says_what_to_do() {
        let s = advice(
            Kind::Publish,
            "sensors/x",
            Denied::NoLine { unsafe_name: false },
        );
        assert!(
            s.contains("add a topic/pattern line for \"sensors/x\""),
            "{s}"
        );
        assert!(s.contains("`topic write sensors/x`"), "{s}");
        let s = advice(Kind::Subscribe, "a/#", Denied::DenyLine(4));
        assert!(s.contains("line 4"), "{s}");
        assert!(Denied::UnsafeName(2).to_string().contains("line 2"));
    }

    #[test]
    fn refusal_log_is_bounded_per_client_and_overall() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit("a", t0), Some(0));
        for _ in 0..100 {
            assert_eq!(log.admit("a", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(log.admit("a", t0 + RefusalLog::PER_CLIENT), Some(100));
        // many clients in one second: at most PER_SECOND lines
        let t1 = t0 + RefusalLog::PER_CLIENT + Duration::from_secs(5);
        let admitted = (0..1000)
            .filter(|i| log.admit(&format!("c{i}"), t1).is_some())
            .count();
        assert_eq!(admitted, RefusalLog::PER_SECOND as usize);
        assert!(log.admit("late", t1 + Duration::from_secs(1)).is_some());
        // the memory stays bounded
        let t2 = t1 + Duration::from_secs(2);
        for i in 0..(RefusalLog::MAX_CLIENTS + 10) {
            let _ = log.admit(&format!("d{i}"), t2 + Duration::from_secs(i as u64));
        }
        assert!(log.state.lock().unwrap().clients.len() <= RefusalLog::MAX_CLIENTS);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string()),
        ]
    }

    /// Client ids as a hostile device might choose them.
    fn client_id() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("/"),
                Just("+"),
                Just("#"),
                Just("%c"),
                Just("%u"),
                Just("$"),
            ],
            0..6,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        /// Whatever id a client picks, `pattern write sensors/%c/#` (and friends) never let it
        /// write where another client's own pattern topics are.
        #[test]
        fn no_client_writes_another_clients_c_topics(
            attacker in client_id(),
            victim in "[a-z0-9]{1,6}",
            tail in proptest::collection::vec(level(), 0..3),
        ) {
            prop_assume!(attacker != victim);
            let a = acl("pattern write sensors/%c/#\npattern readwrite dev-%c/in\npattern write %c\n");
            let c = a.for_client(&attacker, None);
            let mut own = vec![format!("sensors/{victim}"), format!("dev-{victim}/in"), victim.clone()];
            let rest = tail.join("/");
            own.push(format!("sensors/{victim}/{rest}"));
            for t in own {
                prop_assert!(c.check_write(&t).is_err(), "{attacker:?} may write {t:?}");
                prop_assert!(c.check_subscribe(&t).is_err(), "{attacker:?} may subscribe {t:?}");
            }
        }

        /// Parsing never panics, whatever the text.
        #[test]
        fn parse_never_panics(text in "(user|topic|pattern|read|write|deny|#|\\+|/| |\t|\n|a|%c){0,40}") {
            let _ = Acl::parse(&text);
        }
    }
}
