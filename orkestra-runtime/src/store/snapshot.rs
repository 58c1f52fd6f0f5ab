//! [`Snapshot`]: a saved fold of one stream, so loading an aggregate reads the events
//! after it instead of the whole stream.

/// The state of a stream folded up to `version`, as JSON, tagged with the shape of the
/// state type that wrote it. A store keeps one per stream (the newest); a snapshot only
/// saves time, so a lost, stale or unreadable one is never an error for its reader: it
/// replays the stream instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The version of the last event folded into `state`.
    pub version: u64,
    /// A tag of the state's shape (generated code uses a hash of the state fields): a
    /// reader ignores a snapshot whose tag is not its own.
    pub shape: String,
    /// The state, as JSON text.
    pub state: String,
}

impl Snapshot {
    /// Whether `self` should replace `stored`: a newer version, or another shape (the
    /// release that saves now is the one that reads next).
    pub(crate) fn replaces(&self, stored: &Snapshot) -> bool {
        self.version > stored.version || self.shape != stored.shape
    }
}
