//! What the server counts about itself: [`counters`] (recorded on the request path with
//! relaxed atomics) and [`snapshot`] (one consistent read of them, for the admin pages).

pub mod counters;
pub mod snapshot;
