/// Errors of starting, running or stopping the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store could not be opened or used.
    #[error(transparent)]
    Store(#[from] tillstream_storage::StoreError),
    /// TLS material could not be created or loaded.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Filesystem trouble in the data directory.
    #[error("{what} at {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signing key, the device CA or the revocation list is unusable.
    #[error("authentication setup: {0}")]
    Auth(String),
    /// The settings do not fit together (a cluster without ScyllaDB, ...).
    #[error("{0}")]
    Config(String),
    /// The actor system failed.
    #[error("actor system: {0}")]
    Actor(String),
}
