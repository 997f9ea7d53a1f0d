//! edgeHub's route grammar as a pure library: parse, type-check ("compile") and evaluate
//! the routes of `$edgeHub.properties.desired.routes`, with the semantics of Azure IoT
//! Edge's edgeHub (`Microsoft.Azure.Devices.Routing.Core`). No IO.
//!
//! Parts:
//! - [`Route`] — one route: [`Route::parse`] and [`Route::matches`];
//! - [`RouteTable`] — all routes of a deployment: [`RouteTable::evaluate`] says which
//!   routes (one per sink, the best priority kept) a message takes;
//! - [`Source`], [`Sink`] — `FROM` and `INTO`;
//! - [`Condition`], [`Expr`] — the `WHERE` clause, its syntax tree and printer;
//! - [`RouteMessage`], [`MessageSource`] — what a condition is evaluated against;
//! - [`RouteError`] — every error names the route and the 1-based column.
//!
//! Behaviour taken from edgeHub's source (its ANTLR grammar, `ConditionVisitor`, builtins,
//! `QueryValue`, `Bool`, `Null`, `Undefined`, `BaseMessageSource`, `EndpointFactory`), and
//! deliberately kept where it surprises:
//! - conditions are statically typed: application and system properties are strings and
//!   comparing one with a number is an error (`as_number(temp) > 30` is the way);
//! - three-valued logic: a missing property is *undefined*; comparisons with undefined are
//!   undefined; `false AND undefined` is false, `true OR undefined` is true; a route takes a
//!   message only if its condition is exactly `true`;
//! - `NOT` binds tighter than comparisons (`NOT a = b` is `(NOT a) = b`);
//! - identifiers may contain `-` `.` `!` and more, so operators need spaces (`a-1` is a name);
//! - `$name` is the application property `$name` if there is one, else the system property
//!   (`$contentType` -> `$.ct`, see [`system_property_key`]); `{$name}` is the system one only;
//! - `$body.a.b` needs content type `application/json` and encoding utf-8/16/32, else it is
//!   undefined; a path to nothing is `null`; objects, arrays and ISO dates are undefined;
//! - sources match by case-insensitive path prefix.
//!
//! Where this crate departs from edgeHub (all of them reject or fix what edgeHub
//! mishandles): text after the sink is an error (edgeHub ignores it); unknown source paths,
//! bad `BrokeredEndpoint` addresses and `$x[0]` are errors; `is_null($body.x)` is true only
//! for a JSON null (edgeHub: for any defined value); a `$body` value may be the right operand
//! of AND/OR (edgeHub rejects it); `%` and unary `-` work on `$body` values (edgeHub throws);
//! routes without a priority get [`DEFAULT_PRIORITY`], below every explicit one, as edgeHub.

mod ast;
mod body;
mod error;
mod eval;
#[cfg(test)]
mod eval_tests;
mod lexer;
mod number;
mod parser;
mod source;

use std::collections::BTreeMap;
use std::fmt;

pub use ast::{BinaryOp, Expr, Literal, UnaryOp};
pub use error::RouteError;
pub use eval::system_property_key;
pub use source::{EndpointError, Sink, Source};

/// Priority of a route that does not set one. edgeHub gives such routes a priority below
/// every explicit one (2,000,000,000 where explicit ones are 0..=9, 0 the highest), so
/// here it is 10.
pub const DEFAULT_PRIORITY: u8 = 10;

/// A message as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct RouteMessage<'a> {
    /// Where it came from.
    pub source: MessageSource<'a>,
    /// System properties by wire key: `$.ct`, `$.ce`, `$.mid`, `$.cid`, `$.cdid`, `$.cmid`,
    /// `$.on`, ... (see [`system_property_key`]).
    pub system_properties: &'a BTreeMap<String, String>,
    /// Application properties (always strings on the wire).
    pub properties: &'a BTreeMap<String, String>,
    /// The payload; queried by `$body...` only when it is JSON (see the crate docs).
    pub body: &'a [u8],
}

/// Where a message entered the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageSource<'a> {
    /// A module's output (`output` empty when the module sent without an output name).
    Module { module: &'a str, output: &'a str },
    /// A (leaf) device's telemetry.
    Device,
    /// A reported-properties change of a module (or of a device when `module` is None).
    TwinChangeNotification { module: Option<&'a str> },
}

/// A compiled `WHERE` condition. Two conditions are equal when their syntax trees are.
#[derive(Debug, Clone)]
pub struct Condition {
    expr: Expr,
    node: eval::Node,
}

impl Condition {
    /// Parse and type-check a condition on its own (the text after `WHERE`). `name` names
    /// the route in errors.
    pub fn parse(name: &str, text: &str) -> Result<Condition, RouteError> {
        parser::parse_condition(name, text)
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Is the condition exactly `true` for this message?
    pub fn matches(&self, msg: &RouteMessage<'_>) -> bool {
        eval::matches(&self.node, &eval::Ctx::new(msg))
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The route's name (its key in the manifest).
    pub name: String,
    pub source: Source,
    /// `None` when the route has no `WHERE`: every message from the source matches.
    pub condition: Option<Condition>,
    pub sink: Sink,
    /// 0..=9, 0 the highest; [`DEFAULT_PRIORITY`] (lower than all) when not set.
    pub priority: u8,
    /// Seconds a message waits for this route's sink; `None`: the hub's
    /// `storeAndForwardConfiguration.timeToLiveSecs`.
    pub time_to_live_secs: Option<u32>,
}

impl Route {
    /// Parse and compile `text` (`FROM <source> [WHERE <condition>] INTO <sink>`, optionally
    /// starting with `SELECT *`). Priority [`DEFAULT_PRIORITY`], no time to live.
    pub fn parse(name: &str, text: &str) -> Result<Route, RouteError> {
        let parsed = parser::parse_route(name, text)?;
        Ok(Route {
            name: name.to_string(),
            source: parsed.source,
            condition: parsed.condition,
            sink: parsed.sink,
            priority: DEFAULT_PRIORITY,
            time_to_live_secs: None,
        })
    }

    /// Set the schema-1.1 options of a route (`"priority"`, `"timeToLiveSecs"`); `None`
    /// keeps the default. A priority above 9 is an error.
    pub fn with_options(
        mut self,
        priority: Option<u8>,
        time_to_live_secs: Option<u32>,
    ) -> Result<Route, RouteError> {
        if let Some(p) = priority {
            if p > 9 {
                return Err(RouteError::whole(
                    &self.name,
                    &self.to_string(),
                    format!("priority {p} is out of range; use 0 (highest) to 9 (lowest)"),
                ));
            }
            self.priority = p;
        }
        if time_to_live_secs.is_some() {
            self.time_to_live_secs = time_to_live_secs;
        }
        Ok(self)
    }

    /// Does this route take the message (source matches and condition is exactly true)?
    pub fn matches(&self, msg: &RouteMessage<'_>) -> bool {
        self.matches_in(&eval::Ctx::new(msg))
    }

    fn matches_in(&self, ctx: &eval::Ctx<'_, '_>) -> bool {
        self.source.matches(&ctx.msg.source)
            && self
                .condition
                .as_ref()
                .is_none_or(|c| eval::matches(&c.node, ctx))
    }
}

/// The route in canonical form; parsing it gives back the same route (name, priority and
/// time to live aside).
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FROM {}", self.source)?;
        if let Some(c) = &self.condition {
            write!(f, " WHERE {c}")?;
        }
        write!(f, " INTO {}", self.sink)
    }
}

/// All routes of a deployment.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Build a table; two routes with the same name are an error.
    pub fn new(routes: Vec<Route>) -> Result<Self, RouteError> {
        for (i, r) in routes.iter().enumerate() {
            if routes[..i].iter().any(|o| o.name == r.name) {
                return Err(RouteError::whole(
                    &r.name,
                    &r.to_string(),
                    "this route name is used twice; give every route its own name",
                ));
            }
        }
        Ok(RouteTable { routes })
    }

    /// Parse `(name, text)` pairs into a table.
    pub fn parse<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RouteError> {
        let routes = routes
            .into_iter()
            .map(|(name, text)| Route::parse(name, text))
            .collect::<Result<Vec<_>, _>>()?;
        RouteTable::new(routes)
    }

    /// The routes a message takes, in table order. When several matching routes share a
    /// sink, the message goes there once: only the route with the best (lowest) priority
    /// is kept, the first in table order on a tie. The body is parsed at most once.
    pub fn evaluate(&self, msg: &RouteMessage<'_>) -> Vec<&Route> {
        let ctx = eval::Ctx::new(msg);
        let matched: Vec<&Route> = self.routes.iter().filter(|r| r.matches_in(&ctx)).collect();
        matched
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                !matched.iter().enumerate().any(|(j, o)| {
                    j != *i
                        && o.sink == r.sink
                        && (o.priority < r.priority || (o.priority == r.priority && j < *i))
                })
            })
            .map(|(_, r)| *r)
            .collect()
    }

    /// All routes, in the order given.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
