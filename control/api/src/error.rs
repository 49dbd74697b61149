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
    /// A patch body that is not a patch of its type (a 400 for the server).
    #[error("{0}")]
    BadPatch(String),
    /// A well-formed patch that does not apply to the object (a 422 for the server).
    #[error("{0}")]
    PatchNotApplicable(String),
    /// A JSON patch with more operations than Kubernetes allows (a 413 for the server).
    #[error("The allowed maximum operations in a JSON patch is {max}, got {got}")]
    PatchTooLarge {
        /// The most operations allowed.
        max: usize,
        /// The operations in the patch.
        got: usize,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
