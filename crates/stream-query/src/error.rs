//! Errors: bad query text ([`QueryError`]), unusable events ([`EventError`]), unusable reference
//! data ([`ReferenceError`]) and unusable checkpoints ([`RestoreError`]). Every message says what is wrong and what to do about it.

use thiserror::Error;

/// A query that cannot be parsed or planned. `line` and `column` are 1-based and count characters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {message}")]
pub struct QueryError {
    /// 1-based line of the offending token.
    pub line: usize,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl QueryError {
    pub(crate) fn new(line: usize, column: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            line,
            column,
            message: message.into(),
        }
    }
}

/// An input event that the engine cannot use. The event changed no state; send it to a
/// dead-letter output together with this message.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EventError {
    /// The query has no `FROM` that reads this input.
    #[error("the query does not read input '{input}' (it reads: {known}); route this input to a FROM name of the query or fix the route")]
    UnknownInput { input: String, known: String },
    /// The payload is JSON but not an object.
    #[error("the event is not a JSON object; send one JSON object per message")]
    NotAnObject,
    /// `TIMESTAMP BY` names a field the event does not have (or that is null).
    #[error("the event has no timestamp field '{field}' (TIMESTAMP BY); add it to the event or change TIMESTAMP BY")]
    MissingTimestamp { field: String },
    /// The timestamp field holds something that is not a date and time.
    #[error("the timestamp field '{field}' holds {value}, which is not a date and time; send ISO 8601 (2026-11-24T08:05:29Z), epoch milliseconds, or .NET DateTime.ToString() text")]
    BadTimestamp { field: String, value: String },
    /// An expression of the query cannot use a value of the event (for example `AVG(temp)` where
    /// `temp` is a string, or a failing `CAST`).
    #[error("{expression}: {message}")]
    WrongType { expression: String, message: String },
    /// The event-ordering policy (action Drop) dropped the event.
    #[error("dropped by the event-ordering policy: {reason}")]
    Dropped { reason: String },
    /// The event nests objects and arrays deeper than the engine keeps
    /// ([`crate::MAX_EVENT_NESTING`]): its checkpoints must stay readable.
    #[error("the event nests objects or arrays more than {max} levels deep; flatten it")]
    TooDeep { max: usize },
}

/// Reference data the engine cannot use ([`crate::Engine::set_reference`]); the rows it had
/// before stay.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    /// A row is not a JSON object.
    #[error("row {row} of reference data '{name}' is not a JSON object but {found}; give one JSON object per row")]
    NotAnObject {
        name: String,
        /// 1-based.
        row: usize,
        found: String,
    },
}

/// A checkpoint that cannot be restored; start a fresh engine instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreError {
    /// The checkpoint was taken with a different query text.
    #[error("the checkpoint belongs to a different query; start with empty windows (Engine::new) after a query change")]
    QueryChanged,
    /// The checkpoint JSON does not have the expected shape.
    #[error("the checkpoint is not a stream-query engine state ({0}); delete it and start with empty windows")]
    Malformed(String),
}
