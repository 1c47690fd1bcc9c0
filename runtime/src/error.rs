//! The runtime's error type: every failure carries one line that names what went wrong.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json (or another input file) is missing, malformed or asks for something impossible.
    #[error("{0}")]
    Config(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container does not exist: {0}")]
    NotFound(String),
    /// The container is in a state where the verb is not allowed.
    #[error("{0}")]
    State(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what we were doing" to io and nix errors.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Sys {
            context: context(),
            source,
        })
    }
}

pub fn config_err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}
