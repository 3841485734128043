//! Identities shared by several layers: [`ConnId`], which names one client connection for its
//! whole life (the event loops, the workers' messages and the applications' admission queues
//! all refer to connections by it).

/// Identifies a connection across its slot's reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The event loop that owns the connection.
    pub event_loop: usize,
    /// The slot (mio token) in that loop's connection table.
    pub token: usize,
    /// That loop's accept counter when the connection was accepted: a later connection in the
    /// same slot has another.
    pub generation: u64,
}
