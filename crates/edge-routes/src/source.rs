//! Route sources (`FROM ...`) and sinks (`INTO ...`).

use std::fmt;

use crate::MessageSource;

/// Where a route takes messages from. edgeHub matches sources by case-insensitive path
/// prefix, segment by segment: the message's path (`/messages/modules/{m}/outputs/{o}` for
/// a module output, `/messages` for a device, `/twinChangeNotifications` for twin changes)
/// must start with the route's path, a trailing `/*` being the same as no star.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `/*`: every message and twin change notification.
    All,
    /// `/twinChangeNotifications`: reported-property changes of modules and devices.
    TwinChangeNotifications,
    /// `/messages/*` (or `/messages`): every device-to-cloud message, from devices and modules.
    Messages,
    /// `/messages/modules/*`: every message sent by any module.
    AllModules,
    /// `/messages/modules/{module}/*` (or without `/*`): every message of that module.
    Module { module: String },
    /// `/messages/modules/{module}/outputs/*`: messages of that module sent through an output.
    ModuleOutputs { module: String },
    /// `/messages/modules/{module}/outputs/{output}`: that module's output.
    ModuleOutput { module: String, output: String },
}

const SOURCE_FORMS: &str = "/*, /messages/*, /messages/modules/*, /messages/modules/<module>/*, /messages/modules/<module>/outputs/*, /messages/modules/<module>/outputs/<output>, /twinChangeNotifications";

/// Why a route's source or sink is not one edgeHub knows (the parser puts it at its place in
/// the route: [`crate::RouteError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "the source {path} has '{star}' in the middle; '*' may only end a source: {SOURCE_FORMS}"
    )]
    StarInMiddle { path: String, star: String },
    #[error("unknown source {path}; a source is one of {SOURCE_FORMS}")]
    UnknownSource { path: String },
    #[error("BrokeredEndpoint needs an address of the form \"/modules/<module>/inputs/<input>\", found {address:?}")]
    BadBrokeredAddress { address: String },
}

impl Source {
    /// Interpret a source path such as `/messages/modules/M/outputs/o` (whitespace and
    /// comments already removed, as edgeHub does).
    pub fn from_path(path: &str) -> Result<Source, EndpointError> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let mut segments: Vec<&str> = trimmed.split('/').collect();
        if segments.last() == Some(&"*") {
            segments.pop();
        }
        if let Some(star) = segments.iter().find(|s| s.contains('*')) {
            return Err(EndpointError::StarInMiddle {
                path: path.to_string(),
                star: star.to_string(),
            });
        }
        let is = |s: &str, k: &str| s.eq_ignore_ascii_case(k);
        let source = match segments.as_slice() {
            [] => Source::All,
            [t] if is(t, "twinChangeNotifications") => Source::TwinChangeNotifications,
            [m] if is(m, "messages") => Source::Messages,
            [m, s] if is(m, "messages") && is(s, "modules") => Source::AllModules,
            [m, s, module] if is(m, "messages") && is(s, "modules") => Source::Module {
                module: module.to_string(),
            },
            [m, s, module, o] if is(m, "messages") && is(s, "modules") && is(o, "outputs") => {
                Source::ModuleOutputs {
                    module: module.to_string(),
                }
            }
            [m, s, module, o, output]
                if is(m, "messages") && is(s, "modules") && is(o, "outputs") =>
            {
                Source::ModuleOutput {
                    module: module.to_string(),
                    output: output.to_string(),
                }
            }
            _ => {
                return Err(EndpointError::UnknownSource {
                    path: path.to_string(),
                })
            }
        };
        Ok(source)
    }

    /// The path prefix a message's path must start with, ending in `/`.
    fn prefix(&self) -> String {
        match self {
            Source::All => "/".into(),
            Source::TwinChangeNotifications => "/twinChangeNotifications/".into(),
            Source::Messages => "/messages/".into(),
            Source::AllModules => "/messages/modules/".into(),
            Source::Module { module } => format!("/messages/modules/{module}/"),
            Source::ModuleOutputs { module } => format!("/messages/modules/{module}/outputs/"),
            Source::ModuleOutput { module, output } => {
                format!("/messages/modules/{module}/outputs/{output}/")
            }
        }
    }

    /// Does a message from `source` enter this route?
    pub fn matches(&self, source: &MessageSource<'_>) -> bool {
        let path = match source {
            MessageSource::Device => "/messages/".to_string(),
            MessageSource::Module { module, output: "" } => {
                format!("/messages/modules/{module}/")
            }
            MessageSource::Module { module, output } => {
                format!("/messages/modules/{module}/outputs/{output}/")
            }
            MessageSource::TwinChangeNotification { .. } => "/twinChangeNotifications/".into(),
        };
        starts_with_ignore_case(&path, &self.prefix())
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    if s.is_ascii() && prefix.is_ascii() {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        s.to_uppercase().starts_with(&prefix.to_uppercase())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::All => f.write_str("/*"),
            Source::TwinChangeNotifications => f.write_str("/twinChangeNotifications"),
            Source::Messages => f.write_str("/messages/*"),
            Source::AllModules => f.write_str("/messages/modules/*"),
            Source::Module { module } => write!(f, "/messages/modules/{module}/*"),
            Source::ModuleOutputs { module } => write!(f, "/messages/modules/{module}/outputs/*"),
            Source::ModuleOutput { module, output } => {
                write!(f, "/messages/modules/{module}/outputs/{output}")
            }
        }
    }
}

/// Where a route delivers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    /// `$upstream`: IoT Hub.
    Upstream,
    /// `BrokeredEndpoint("/modules/{module}/inputs/{input}")`: a module's input.
    ModuleInput { module: String, input: String },
}

impl Sink {
    /// Parse the address inside `BrokeredEndpoint("...")`, as edgeHub's endpoint factory
    /// does (trimmed, one leading and one trailing `/` optional), and check its form.
    pub fn from_brokered_address(address: &str) -> Result<Sink, EndpointError> {
        let mut a = address.trim();
        a = a.strip_prefix('/').unwrap_or(a);
        a = a.strip_suffix('/').unwrap_or(a);
        let parts: Vec<&str> = a.split('/').collect();
        match parts.as_slice() {
            [m, module, i, input]
                if m.eq_ignore_ascii_case("modules")
                    && i.eq_ignore_ascii_case("inputs")
                    && !module.trim().is_empty()
                    && !input.trim().is_empty() =>
            {
                Ok(Sink::ModuleInput {
                    module: module.to_string(),
                    input: input.to_string(),
                })
            }
            _ => Err(EndpointError::BadBrokeredAddress {
                address: address.to_string(),
            }),
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Upstream => f.write_str("$upstream"),
            Sink::ModuleInput { module, input } => {
                // edgeHub takes the address between the quotes as it is (no unescaping), so it is
                // written between the quote it can stand in: `"`, unless a `"` in it would end the
                // string early (the address came from a '...' string), then `'`.
                let address = format!("/modules/{module}/inputs/{input}");
                let double: Vec<char> = format!("\"{address}\"").chars().collect();
                let q = if crate::lexer::string(&double).0 == double.len() {
                    '"'
                } else {
                    '\''
                };
                write!(f, "BrokeredEndpoint({q}{address}{q})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module<'a>(module: &'a str, output: &'a str) -> MessageSource<'a> {
        MessageSource::Module { module, output }
    }

    /// Found by `fuzz/fuzz_targets/routes.rs`: an address written between single quotes that
    /// holds a `"` was printed between double quotes, which the parser cannot read back.
    #[test]
    fn a_sink_prints_between_quotes_that_read_back() {
        for text in [
            r#"FROM /* INTO BrokeredEndpoint('/modules/a"b/inputs/in')"#,
            r#"FROM /* INTO BrokeredEndpoint('/modules/a\'"b/inputs/in')"#,
            r#"FROM /* INTO BrokeredEndpoint("/modules/a'b/inputs/in")"#,
            r#"FROM /* INTO BrokeredEndpoint("/modules/m/inputs/in")"#,
        ] {
            let r = crate::Route::parse("r", text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let printed = r.to_string();
            let again = crate::Route::parse("r", &printed)
                .unwrap_or_else(|e| panic!("{text} printed as {printed}: {e}"));
            assert_eq!(again, r, "{printed}");
        }
        let r = crate::Route::parse(
            "r",
            r#"FROM /* INTO BrokeredEndpoint("/modules/m/inputs/in")"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.to_string(),
            r#"FROM /* INTO BrokeredEndpoint("/modules/m/inputs/in")"#
        );
    }

    #[test]
    fn source_forms() {
        assert_eq!(Source::from_path("/*"), Ok(Source::All));
        assert_eq!(Source::from_path("/messages/*"), Ok(Source::Messages));
        assert_eq!(Source::from_path("/messages"), Ok(Source::Messages));
        assert_eq!(
            Source::from_path("/MESSAGES/Modules/*"),
            Ok(Source::AllModules)
        );
        assert_eq!(
            Source::from_path("/messages/modules/M"),
            Ok(Source::Module { module: "M".into() })
        );
        assert_eq!(
            Source::from_path("/messages/modules/M/*"),
            Ok(Source::Module { module: "M".into() })
        );
        assert_eq!(
            Source::from_path("/messages/modules/M/outputs/*"),
            Ok(Source::ModuleOutputs { module: "M".into() })
        );
        assert_eq!(
            Source::from_path("/messages/modules/M/outputs/o"),
            Ok(Source::ModuleOutput {
                module: "M".into(),
                output: "o".into()
            })
        );
        assert_eq!(
            Source::from_path("/twinChangeNotifications"),
            Ok(Source::TwinChangeNotifications)
        );
        assert!(Source::from_path("/messages/*/x").is_err());
        assert!(Source::from_path("/foo").is_err());
        assert!(Source::from_path("/messages/modules/M/inputs/x").is_err());
    }

    #[test]
    fn prefix_matching() {
        let all = Source::All;
        let messages = Source::Messages;
        let modules = Source::AllModules;
        let m = Source::Module {
            module: "Mod".into(),
        };
        let outs = Source::ModuleOutputs {
            module: "Mod".into(),
        };
        let out1 = Source::ModuleOutput {
            module: "Mod".into(),
            output: "out1".into(),
        };
        let twin = Source::TwinChangeNotifications;
        let dev = MessageSource::Device;
        let tw = MessageSource::TwinChangeNotification { module: None };

        assert!(all.matches(&dev) && all.matches(&module("X", "o")) && all.matches(&tw));
        assert!(messages.matches(&dev) && messages.matches(&module("X", "o")));
        assert!(!messages.matches(&tw));
        assert!(!modules.matches(&dev) && modules.matches(&module("X", "o")));
        assert!(m.matches(&module("Mod", "any")) && m.matches(&module("mod", "any")));
        assert!(m.matches(&module("Mod", "")));
        assert!(!m.matches(&module("Mod2", "any")) && !m.matches(&dev));
        assert!(outs.matches(&module("Mod", "x")) && !outs.matches(&module("Mod", "")));
        assert!(out1.matches(&module("Mod", "out1")) && out1.matches(&module("MOD", "OUT1")));
        assert!(!out1.matches(&module("Mod", "out10")) && !out1.matches(&module("Mod", "out")));
        assert!(twin.matches(&tw) && !twin.matches(&dev));
    }

    #[test]
    fn brokered_addresses() {
        assert_eq!(
            Sink::from_brokered_address("/modules/A/inputs/in1"),
            Ok(Sink::ModuleInput {
                module: "A".into(),
                input: "in1".into()
            })
        );
        assert!(Sink::from_brokered_address(" modules/A/inputs/in1/ ").is_ok());
        assert!(Sink::from_brokered_address("/modules/A/outputs/in1").is_err());
        assert!(Sink::from_brokered_address("/modules/A/inputs").is_err());
        assert!(Sink::from_brokered_address("/modules//inputs/x").is_err());
        assert!(Sink::from_brokered_address("/modules/A/inputs/x/y").is_err());
    }
}
