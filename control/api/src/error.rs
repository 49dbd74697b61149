//! Errors of the object model.

/// Errors from parsing selectors, decoding objects or applying patches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A label or field selector could not be parsed.
    #[error("unable to parse requirement: {0}")]
    Selector(String),
    /// A field selector names a field the resource does not support.
    #[error("field label not supported: {0}")]
    FieldLabelNotSupported(String),
    /// An object did not decode into its Kubernetes type.
    #[error("{0}")]
    Decode(String),
    /// A body encoding this crate cannot decode for that kind (a 415 for the server).
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// A patch could not be applied.
    #[error("{0}")]
    Patch(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
